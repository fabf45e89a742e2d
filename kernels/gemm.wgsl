// The tiled GEMM every matrix product runs on (src/kernel/gpu/gemm.rs): out = A · B per group,
// A [rows, inner], B [inner, cols]. An operand file placed before this one says what A, B and
// out are (kernels/matmul.wgsl: strided matrices; kernels/conv.wgsl: implicit im2col). It
// declares `p: Params` with the fields `k_chunk`, `slices`, `slice_words`, the `out` binding,
// and the functions `sizes()` (rows, cols, inner), `load_a(r, k, g)`, `load_b(k, c, g)` (both
// called in range only), `out_index(r, c, g)`, and `a_k_fast()`/`b_k_fast()` (whether the
// operand is contiguous along the inner dim, so its tile is loaded in that order: coalesced).
//
// A workgroup of 256 threads, WY along rows by WX along columns, computes a TM x TN tile of
// out (src/kernel/gpu/gemm.rs picks the shape per GEMM and substitutes the constants). Each
// thread owns RM x RN outputs in 4 x 4 blocks: rows 4 (ly + WY i) + 0..3, columns
// 4 (lx + WX j) + 0..3, so it reads its A and B values from workgroup memory as vec4s (one
// load per 4 rows or columns: the inner loop is FMAs, not loads) and neighbouring threads read
// neighbouring vec4s. The inner dim advances TK at a time through tiles of A and B staged in
// workgroup memory. Each element is summed in order of k by one thread, whatever the tile.
//
// Split-K: workgroup z is group * slices + slice; slice s sums k in [s * k_chunk,
// (s + 1) * k_chunk) and writes its partial to `out` (then the launch's workspace) at
// `slice_words * s`; kernels/split_k.wgsl adds the slices in order. No atomics: deterministic.
// Tiles are numbered along x (folded into y past 65,535), column tiles fastest.

const TM: u32 = 64u;
const TN: u32 = 64u;
const WY: u32 = 16u;
const TK: u32 = 16u;
const WX: u32 = 256u / WY;
// 4x4 blocks per thread along rows and columns.
const BM: u32 = TM / WY / 4u;
const BN: u32 = TN / WX / 4u;

// Values of A and B each thread stages per step of the inner dim.
const LA: u32 = TK * TM / 256u;
const LB: u32 = TK * TN / 256u;
// Workgroup memory rows (one per k) of TM / 4 and TN / 4 vec4s, padded by one vec4: a warp
// storing 16 consecutive k of one row then hits 8 banks twice, not one bank 16 times.
const SA: u32 = TM / 4u + 1u;
const SB: u32 = TN / 4u + 1u;

// ta[k * SA + r / 4][r % 4] is A's row r at k; tb likewise for B's columns.
var<workgroup> ta: array<vec4<f32>, TK * SA>;
var<workgroup> tb: array<vec4<f32>, TK * SB>;

// Where staged value `e` of a tile (TK x `len` along the rows or columns) lies: (row or
// column, k). Loaded k-fastest where the operand is contiguous along k (coalesced).
fn place(e: u32, len: u32, k_fast: bool) -> vec2<u32> {
    if (k_fast) {
        return vec2<u32>(e / TK, e % TK);
    }
    return vec2<u32>(e % len, e / len);
}

// Reads this thread's share of the A and B tiles at k0 into registers (0 outside).
fn fetch(ra: ptr<function, array<f32, LA>>, rb: ptr<function, array<f32, LB>>, tid: u32,
         m0: u32, n0: u32, k0: u32, k_end: u32, s: vec3<u32>, g: u32) {
    for (var q = 0u; q < LA; q = q + 1u) {
        let at = place(tid + 256u * q, TM, a_k_fast());
        var v = 0.0;
        if (m0 + at.x < s.x && k0 + at.y < k_end) {
            v = load_a(m0 + at.x, k0 + at.y, g);
        }
        (*ra)[q] = v;
    }
    for (var q = 0u; q < LB; q = q + 1u) {
        let at = place(tid + 256u * q, TN, b_k_fast());
        var v = 0.0;
        if (n0 + at.x < s.y && k0 + at.y < k_end) {
            v = load_b(k0 + at.y, n0 + at.x, g);
        }
        (*rb)[q] = v;
    }
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) tid: u32) {
    let s = sizes();
    let g = wid.z / p.slices;
    let slice = wid.z % p.slices;
    let k_begin = slice * p.k_chunk;
    let k_end = min(s.z, k_begin + p.k_chunk);
    let nt = (s.y + TN - 1u) / TN;
    let t = wid.y * nwg.x + wid.x;
    // Past the last tile (a folded grid overshoots): every row is >= rows, so nothing is
    // loaded or stored, but the thread still reaches every barrier.
    let m0 = (t / nt) * TM;
    let n0 = (t % nt) * TN;
    let lx = tid % WX;
    let ly = tid / WX;

    // acc[(i * 4 + c) * BN + j]: row 4 (ly + WY i) + c, columns 4 (lx + WX j) + 0..3.
    var acc: array<vec4<f32>, BM * 4u * BN>;
    var av: array<vec4<f32>, BM>;
    var bv: array<vec4<f32>, BN>;
    var ra: array<f32, LA>;
    var rb: array<f32, LB>;
    fetch(&ra, &rb, tid, m0, n0, k_begin, k_end, s, g);
    for (var k0 = k_begin; k0 < k_end; k0 = k0 + TK) {
        for (var q = 0u; q < LA; q = q + 1u) {
            let at = place(tid + 256u * q, TM, a_k_fast());
            ta[at.y * SA + at.x / 4u][at.x % 4u] = ra[q];
        }
        for (var q = 0u; q < LB; q = q + 1u) {
            let at = place(tid + 256u * q, TN, b_k_fast());
            tb[at.y * SB + at.x / 4u][at.x % 4u] = rb[q];
        }
        workgroupBarrier();
        // The next tiles' loads are in flight while this one is multiplied.
        if (k0 + TK < k_end) {
            fetch(&ra, &rb, tid, m0, n0, k0 + TK, k_end, s, g);
        }
        for (var kk = 0u; kk < TK; kk = kk + 1u) {
            for (var i = 0u; i < BM; i = i + 1u) {
                av[i] = ta[kk * SA + ly + WY * i];
            }
            for (var j = 0u; j < BN; j = j + 1u) {
                bv[j] = tb[kk * SB + lx + WX * j];
            }
            for (var i = 0u; i < BM; i = i + 1u) {
                for (var c = 0u; c < 4u; c = c + 1u) {
                    for (var j = 0u; j < BN; j = j + 1u) {
                        let at = (i * 4u + c) * BN + j;
                        acc[at] = acc[at] + av[i][c] * bv[j];
                    }
                }
            }
        }
        workgroupBarrier();
    }
    let base = slice * p.slice_words;
    for (var i = 0u; i < BM; i = i + 1u) {
        for (var c = 0u; c < 4u; c = c + 1u) {
            let row = m0 + 4u * (ly + WY * i) + c;
            for (var j = 0u; j < BN; j = j + 1u) {
                for (var d = 0u; d < 4u; d = d + 1u) {
                    let col = n0 + 4u * (lx + WX * j) + d;
                    if (row < s.x && col < s.y) {
                        out[base + out_index(row, col, g)] = acc[(i * 4u + c) * BN + j][d];
                    }
                }
            }
        }
    }
}
