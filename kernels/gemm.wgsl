// The tiled GEMM every matrix product runs on (src/kernel/gpu/gemm.rs): out = A · B per group,
// A [rows, inner], B [inner, cols]. An operand file placed before this one says what A, B and
// out are (kernels/matmul.wgsl: strided matrices; kernels/conv.wgsl: implicit im2col). It
// declares `p: Params` with the fields `k_chunk`, `slices`, `slice_words`, the `out` binding,
// and the functions `sizes()` (rows, cols, inner), `load_a(r, k, g)`, `load_b(k, c, g)` (both
// called in range only), `out_index(r, c, g)`, and `a_k_fast()`/`b_k_fast()` (whether the
// operand is contiguous along the inner dim, so its tile is loaded in that order: coalesced).
//
// A workgroup of 16x16 threads computes a 64x64 tile of out; each thread owns a 4x4 block of
// it, interleaved (rows ly + 16i, columns lx + 16j) so that neighbouring threads read
// neighbouring words of workgroup memory. The inner dim advances 16 at a time through tiles of
// A and B staged in workgroup memory. Each element is summed in order of k by one thread.
//
// Split-K: workgroup z is group * slices + slice; slice s sums k in [s * k_chunk,
// (s + 1) * k_chunk) and writes its partial to `out` (then the launch's workspace) at
// `slice_words * s`; kernels/split_k.wgsl adds the slices in order. No atomics: deterministic.
// Tiles are numbered along x (folded into y past 65,535), column tiles fastest.

const TILE: u32 = 64u;
const TK: u32 = 16u;

// [TK][TILE]: ta[k * TILE + row], tb[k * TILE + col]. 8 KiB together.
var<workgroup> ta: array<f32, 1024>;
var<workgroup> tb: array<f32, 1024>;

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>) {
    let s = sizes();
    let g = wid.z / p.slices;
    let slice = wid.z % p.slices;
    let k_begin = slice * p.k_chunk;
    let k_end = min(s.z, k_begin + p.k_chunk);
    let nt = (s.y + TILE - 1u) / TILE;
    let t = wid.y * nwg.x + wid.x;
    // Past the last tile (a folded grid overshoots): every row is >= rows, so nothing is
    // loaded or stored, but the thread still reaches every barrier.
    let m0 = (t / nt) * TILE;
    let n0 = (t % nt) * TILE;
    let tid = lid.y * 16u + lid.x;

    var acc: array<vec4<f32>, 4>;
    for (var k0 = k_begin; k0 < k_end; k0 = k0 + TK) {
        for (var q = 0u; q < 4u; q = q + 1u) {
            let e = tid + q * 256u;
            // A's tile: TILE rows by TK.
            var r = e % TILE;
            var kk = e / TILE;
            if (a_k_fast()) {
                r = e / TK;
                kk = e % TK;
            }
            var va = 0.0;
            if (m0 + r < s.x && k0 + kk < k_end) {
                va = load_a(m0 + r, k0 + kk, g);
            }
            ta[kk * TILE + r] = va;
            // B's tile: TK by TILE columns.
            var col = e % TILE;
            kk = e / TILE;
            if (b_k_fast()) {
                col = e / TK;
                kk = e % TK;
            }
            var vb = 0.0;
            if (n0 + col < s.y && k0 + kk < k_end) {
                vb = load_b(k0 + kk, n0 + col, g);
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
    let base = slice * p.slice_words;
    for (var i = 0u; i < 4u; i = i + 1u) {
        let row = m0 + lid.y + 16u * i;
        for (var j = 0u; j < 4u; j = j + 1u) {
            let col = n0 + lid.x + 16u * j;
            if (row < s.x && col < s.y) {
                out[base + out_index(row, col, g)] = acc[i][j];
            }
        }
    }
}
