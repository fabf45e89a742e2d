// The tiled GEMM every matrix product runs on (src/kernel/gpu/gemm.rs): out = A · B per group,
// A [rows, inner], B [inner, cols]. An operand file placed before this one says what A, B and
// out are (kernels/matmul.wgsl: strided matrices; kernels/conv.wgsl: implicit im2col). It
// declares `p: Params` with the fields `k_chunk`, `slices`, `slice_words`, the `out` binding,
// and the functions
// - `sizes()` (rows, cols, inner) and `out_index(r, c, g)`;
// - `load_a(r, k, g)`, `load_b(k, c, g)`: one value, called in range only;
// - `a_k_fast()`, `b_k_fast()`: whether the operand is contiguous along the inner dim, so its
//   tile is read in runs along k (else along its rows or columns): coalesced either way;
// - `a_vec()`, `b_vec()`, `load_a4(r, k, g)`, `load_b4(k, c, g)`: whether the four values
//   along that dim from a multiple of 4 (a quad) come cheaper at once (one vec4 read, or one
//   im2col index computation), and that read; called only for quads wholly in range.
//
// A workgroup of 256 threads, WY along rows by WX along columns, computes a TM x TN tile of
// out (src/kernel/gpu/gemm.rs picks the shape per GEMM and substitutes the constants). Each
// thread owns RM x RN outputs in 4 x 4 blocks: rows 4 (ly + WY i) + 0..3, columns
// 4 (lx + WX j) + 0..3, so it reads its A and B values from workgroup memory as vec4s (one
// load per 4 rows or columns: the inner loop is FMAs, not loads) and neighbouring threads read
// neighbouring vec4s. The inner dim advances TK at a time through tiles of A and B staged in
// workgroup memory; the next tiles are read from memory into registers while this one is
// multiplied. With STAGES = 2 they are then written to the other buffer, so a step needs one
// barrier; with STAGES = 1 (TK = 16: fewer, longer steps, for the tiles with 4x4 or 8x4
// outputs per thread) all threads first wait for the multiply. Each element is summed in
// order of k by one thread, whatever the tile: the same bits.
//
// Split-K: workgroup z is group * slices + slice; slice s sums k in [s * k_chunk,
// (s + 1) * k_chunk) and writes its partial to `out` (then the launch's workspace) at
// `slice_words * s`; kernels/split_k.wgsl adds the slices in order. No atomics: deterministic.
// Tiles are numbered along x (folded into y past 65,535), column tiles fastest.

const TM: u32 = 64u;
const TN: u32 = 64u;
const WY: u32 = 16u;
const TK: u32 = 16u;
const STAGES: u32 = 1u;
const WX: u32 = 256u / WY;
// 4x4 blocks per thread along rows and columns.
const BM: u32 = TM / WY / 4u;
const BN: u32 = TN / WX / 4u;

// Quads (4 values along the operand's contiguous dim) of the A and B tiles, and how many each
// thread stages.
const QA: u32 = TK * TM / 4u;
const QB: u32 = TK * TN / 4u;
const LA: u32 = (QA + 255u) / 256u;
const LB: u32 = (QB + 255u) / 256u;
// Workgroup memory rows (one per k) of TM / 4 and TN / 4 vec4s, padded by one vec4 so that
// quads stored along k spread over the banks.
const SA: u32 = TM / 4u + 1u;
const SB: u32 = TN / 4u + 1u;

// ta[(buffer * TK + k) * SA + r / 4][r % 4] is A's row r at k; tb likewise for B's columns.
var<workgroup> ta: array<vec4<f32>, STAGES * TK * SA>;
var<workgroup> tb: array<vec4<f32>, STAGES * TK * SB>;

// Where quad `e` of a tile (TK x `len` along the rows or columns) starts: (row or column, k).
// It runs along k where the operand is contiguous along k, else along the rows or columns.
fn place(e: u32, len: u32, k_fast: bool) -> vec2<u32> {
    if (k_fast) {
        return vec2<u32>(e / (TK / 4u), 4u * (e % (TK / 4u)));
    }
    return vec2<u32>(4u * (e % (len / 4u)), e / (len / 4u));
}

// A's quad at row r, inner k (0 outside the matrix or the slice).
fn quad_a(r: u32, k: u32, g: u32, rows: u32, k_end: u32) -> vec4<f32> {
    var v = vec4<f32>(0.0);
    if (a_k_fast()) {
        if (r < rows) {
            if (k + 3u < k_end && a_vec()) {
                return load_a4(r, k, g);
            }
            for (var d = 0u; d < 4u; d = d + 1u) {
                if (k + d < k_end) {
                    v[d] = load_a(r, k + d, g);
                }
            }
        }
    } else if (k < k_end) {
        if (r + 3u < rows && a_vec()) {
            return load_a4(r, k, g);
        }
        for (var d = 0u; d < 4u; d = d + 1u) {
            if (r + d < rows) {
                v[d] = load_a(r + d, k, g);
            }
        }
    }
    return v;
}

// B's quad at inner k, column c (0 outside the matrix or the slice).
fn quad_b(c: u32, k: u32, g: u32, cols: u32, k_end: u32) -> vec4<f32> {
    var v = vec4<f32>(0.0);
    if (b_k_fast()) {
        if (c < cols) {
            if (k + 3u < k_end && b_vec()) {
                return load_b4(k, c, g);
            }
            for (var d = 0u; d < 4u; d = d + 1u) {
                if (k + d < k_end) {
                    v[d] = load_b(k + d, c, g);
                }
            }
        }
    } else if (k < k_end) {
        if (c + 3u < cols && b_vec()) {
            return load_b4(k, c, g);
        }
        for (var d = 0u; d < 4u; d = d + 1u) {
            if (c + d < cols) {
                v[d] = load_b(k, c + d, g);
            }
        }
    }
    return v;
}

// Reads this thread's quads of the A and B tiles at k0 into registers.
fn fetch(ra: ptr<function, array<vec4<f32>, LA>>, rb: ptr<function, array<vec4<f32>, LB>>,
         tid: u32, m0: u32, n0: u32, k0: u32, k_end: u32, s: vec3<u32>, g: u32) {
    for (var q = 0u; q < LA; q = q + 1u) {
        let e = tid + 256u * q;
        var v = vec4<f32>(0.0);
        if (e < QA) {
            let at = place(e, TM, a_k_fast());
            v = quad_a(m0 + at.x, k0 + at.y, g, s.x, k_end);
        }
        (*ra)[q] = v;
    }
    for (var q = 0u; q < LB; q = q + 1u) {
        let e = tid + 256u * q;
        var v = vec4<f32>(0.0);
        if (e < QB) {
            let at = place(e, TN, b_k_fast());
            v = quad_b(n0 + at.x, k0 + at.y, g, s.y, k_end);
        }
        (*rb)[q] = v;
    }
}

// Writes the fetched quads to workgroup memory buffer `buf`: one vec4 store for a quad along
// the rows or columns, four stores for a quad along k.
fn stage(ra: ptr<function, array<vec4<f32>, LA>>, rb: ptr<function, array<vec4<f32>, LB>>,
         tid: u32, buf: u32) {
    for (var q = 0u; q < LA; q = q + 1u) {
        let e = tid + 256u * q;
        if (e < QA) {
            let at = place(e, TM, a_k_fast());
            if (a_k_fast()) {
                for (var d = 0u; d < 4u; d = d + 1u) {
                    ta[(buf * TK + at.y + d) * SA + at.x / 4u][at.x % 4u] = (*ra)[q][d];
                }
            } else {
                ta[(buf * TK + at.y) * SA + at.x / 4u] = (*ra)[q];
            }
        }
    }
    for (var q = 0u; q < LB; q = q + 1u) {
        let e = tid + 256u * q;
        if (e < QB) {
            let at = place(e, TN, b_k_fast());
            if (b_k_fast()) {
                for (var d = 0u; d < 4u; d = d + 1u) {
                    tb[(buf * TK + at.y + d) * SB + at.x / 4u][at.x % 4u] = (*rb)[q][d];
                }
            } else {
                tb[(buf * TK + at.y) * SB + at.x / 4u] = (*rb)[q];
            }
        }
    }
}

// The value stored at output index o: the sum itself, or, for a matmul with an epilogue
// (src/kernel/gpu/gemm.rs `Epilogue`), the sum plus the bias, through the activation. With
// split-K the slices store their partials as they are and kernels/split_k.wgsl finishes.
fn finish(v: f32, o: u32) -> f32 {
    return v;
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
    var ra: array<vec4<f32>, LA>;
    var rb: array<vec4<f32>, LB>;
    fetch(&ra, &rb, tid, m0, n0, k_begin, k_end, s, g);
    stage(&ra, &rb, tid, 0u);
    workgroupBarrier();
    var buf = 0u;
    for (var k0 = k_begin; k0 < k_end; k0 = k0 + TK) {
        let more = k0 + TK < k_end;
        // The next tiles' loads are in flight while this one is multiplied.
        if (more) {
            fetch(&ra, &rb, tid, m0, n0, k0 + TK, k_end, s, g);
        }
        let oa = buf * TK * SA;
        let ob = buf * TK * SB;
        for (var kk = 0u; kk < TK; kk = kk + 1u) {
            for (var i = 0u; i < BM; i = i + 1u) {
                av[i] = ta[oa + kk * SA + ly + WY * i];
            }
            for (var j = 0u; j < BN; j = j + 1u) {
                bv[j] = tb[ob + kk * SB + lx + WX * j];
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
        // Two buffers: the other one was last read in the previous step, which every thread
        // finished before that step's barrier. One: every thread must finish this step first.
        if (more) {
            if (STAGES == 1u) {
                workgroupBarrier();
            } else {
                buf = 1u - buf;
            }
            stage(&ra, &rb, tid, buf);
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
                        let o = out_index(row, col, g);
                        out[base + o] = finish(acc[(i * 4u + c) * BN + j][d], o);
                    }
                }
            }
        }
    }
}
