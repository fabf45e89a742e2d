// Strided GEMM: c[m, n] = sum_k a[m, k] * b[k, n], with a and b read through row and column
// strides, so one kernel serves x·wᵀ, dy·w and dyᵀ·x (src/ops/matmul.rs). c is row-major.
//
// A workgroup of 16x16 threads computes a 64x64 tile of c; each thread owns a 4x4 block of it,
// interleaved (rows ly + 16i, columns lx + 16j) so that neighbouring threads read neighbouring
// words of workgroup memory. k advances 16 at a time through tiles of a and b staged in
// workgroup memory. Each element of c is summed in order of k by one thread: deterministic.
// Tiles are numbered along x (folded into y past 65,535, kernel.rs `groups`), column tiles
// fastest.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    // Strides of a along m and k, of b along k and n.
    a_m: u32,
    a_k: u32,
    b_k: u32,
    b_n: u32,
    // 1 where the operand is contiguous along k: its tile is loaded k-fastest (coalesced).
    a_k_fast: u32,
    b_k_fast: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read_write> a: array<f32>;
@group(0) @binding(3) var<storage, read_write> b: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

const TILE: u32 = 64u;
const TK: u32 = 16u;

// [TK][TILE]: ta[k * TILE + row], tb[k * TILE + col]. 8 KiB together.
var<workgroup> ta: array<f32, 1024>;
var<workgroup> tb: array<f32, 1024>;

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>) {
    let nt = (p.n + TILE - 1u) / TILE;
    let t = wid.y * nwg.x + wid.x;
    // Past the last tile (a folded grid overshoots): every row is >= m, so nothing is loaded
    // or stored, but the thread still reaches every barrier.
    let m0 = (t / nt) * TILE;
    let n0 = (t % nt) * TILE;
    let tid = lid.y * 16u + lid.x;

    var acc: array<vec4<f32>, 4>;
    for (var k0 = 0u; k0 < p.k; k0 = k0 + TK) {
        for (var q = 0u; q < 4u; q = q + 1u) {
            let e = tid + q * 256u;
            // a's tile: TILE rows by TK.
            var r: u32;
            var kk: u32;
            if (p.a_k_fast == 1u) {
                r = e / TK;
                kk = e % TK;
            } else {
                r = e % TILE;
                kk = e / TILE;
            }
            var va = 0.0;
            if (m0 + r < p.m && k0 + kk < p.k) {
                va = a[(m0 + r) * p.a_m + (k0 + kk) * p.a_k];
            }
            ta[kk * TILE + r] = va;
            // b's tile: TK by TILE columns.
            var col: u32;
            if (p.b_k_fast == 1u) {
                col = e / TK;
                kk = e % TK;
            } else {
                col = e % TILE;
                kk = e / TILE;
            }
            var vb = 0.0;
            if (n0 + col < p.n && k0 + kk < p.k) {
                vb = b[(k0 + kk) * p.b_k + (n0 + col) * p.b_n];
            }
            tb[kk * TILE + col] = vb;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk = kk + 1u) {
            let bv = vec4<f32>(tb[kk * TILE + lid.x], tb[kk * TILE + lid.x + 16u],
                tb[kk * TILE + lid.x + 32u], tb[kk * TILE + lid.x + 48u]);
            for (var i = 0u; i < 4u; i = i + 1u) {
                acc[i] = acc[i] + ta[kk * TILE + lid.y + 16u * i] * bv;
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i = i + 1u) {
        let row = m0 + lid.y + 16u * i;
        for (var j = 0u; j < 4u; j = j + 1u) {
            let col = n0 + lid.x + 16u * j;
            if (row < p.m && col < p.n) {
                c[row * p.n + col] = acc[i][j];
            }
        }
    }
}
