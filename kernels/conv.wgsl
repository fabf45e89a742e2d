// 2-D convolution and its two gradients as implicit GEMMs (src/ops/conv.rs): the im2col
// matrix is never stored; each tile load computes the input pixel it stands for. One GEMM per
// group (workgroup z), `MODE` choosing the operands (conv.rs substitutes it per op, so each op
// compiles to its own specialised module):
//   0 forward:     y_g [og, N*P]     = w_g [og, cg*kh*kw]  · cols [cg*kh*kw, N*P]
//   1 grad input:  dx_g [cg, N*H*W]  = w_gᵀ [cg, og*kh*kw] · dy gathered [og*kh*kw, N*H*W]
//   2 grad weight: dw_g [og, cg*kh*kw] = dy_g [og, N*P]    · colsᵀ [N*P, cg*kh*kw]
// where P = OH*OW. Grad input gathers, for each input pixel and tap, the output pixel that
// read it (none where the stride skips it), so no sum is scattered. Grad weight's inner dim
// runs over images and pixels in order within one thread: no atomics, deterministic.
//
// Tiling as kernels/matmul.wgsl: 16x16 threads, a 64x64 tile of the GEMM's output per
// workgroup, each thread a 4x4 interleaved block, k 16 at a time through workgroup memory.

const MODE: u32 = 0u;

struct Params {
    n: u32,
    c: u32,
    h: u32,
    w: u32,
    o: u32,
    kh: u32,
    kw: u32,
    oh: u32,
    ow: u32,
    stride_y: u32,
    stride_x: u32,
    pad_y: u32,
    pad_x: u32,
    dil_y: u32,
    dil_x: u32,
    groups: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// forward: x, w; grad input: dy, w; grad weight: x, dy.
@group(0) @binding(2) var<storage, read_write> in0: array<f32>;
@group(0) @binding(3) var<storage, read_write> in1: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

const TILE: u32 = 64u;
const TK: u32 = 16u;

var<workgroup> ta: array<f32, 1024>;
var<workgroup> tb: array<f32, 1024>;

fn cg() -> u32 {
    return p.c / p.groups;
}
fn og() -> u32 {
    return p.o / p.groups;
}
fn taps() -> u32 {
    return p.kh * p.kw;
}
fn pixels() -> u32 {
    return p.oh * p.ow;
}

// The GEMM's sizes: rows, columns, inner.
fn sizes() -> vec3<u32> {
    let np = p.n * pixels();
    if (MODE == 0u) {
        return vec3<u32>(og(), np, cg() * taps());
    } else if (MODE == 1u) {
        return vec3<u32>(cg(), p.n * p.h * p.w, og() * taps());
    }
    return vec3<u32>(og(), cg() * taps(), np);
}

// x[n, g*cg + ci, ...] at output pixel `pix` of image n and tap `t` (ci, ki, kj), or 0 in the
// padding.
fn x_at(n: u32, g: u32, t: u32, pix: u32) -> f32 {
    let ci = t / taps();
    let tt = t % taps();
    let ki = tt / p.kw;
    let kj = tt % p.kw;
    let iy = i32((pix / p.ow) * p.stride_y + ki * p.dil_y) - i32(p.pad_y);
    let ix = i32((pix % p.ow) * p.stride_x + kj * p.dil_x) - i32(p.pad_x);
    if (iy < 0 || ix < 0 || iy >= i32(p.h) || ix >= i32(p.w)) {
        return 0.0;
    }
    return in0[((n * p.c + g * cg() + ci) * p.h + u32(iy)) * p.w + u32(ix)];
}

// The GEMM's left operand at (row r, inner k) of group g; r and k in range.
fn load_a(r: u32, k: u32, g: u32) -> f32 {
    if (MODE == 0u) {
        return in1[(g * og() + r) * cg() * taps() + k];
    } else if (MODE == 1u) {
        // w [o, ci, tap] at o = k / taps, ci = r.
        return in1[((g * og() + k / taps()) * cg() + r) * taps() + k % taps()];
    }
    // dy [n, g*og + r, pix] at k = n*P + pix.
    let n = k / pixels();
    return in1[(n * p.o + g * og() + r) * pixels() + k % pixels()];
}

// The GEMM's right operand at (inner k, column col) of group g; both in range.
fn load_b(k: u32, col: u32, g: u32) -> f32 {
    if (MODE == 0u) {
        return x_at(col / pixels(), g, k, col % pixels());
    } else if (MODE == 1u) {
        // dy at the output pixel whose tap k % taps reads input pixel col, if any.
        let hw = p.h * p.w;
        let n = col / hw;
        let pix = col % hw;
        let oc = k / taps();
        let tt = k % taps();
        let ty = i32(pix / p.w + p.pad_y) - i32((tt / p.kw) * p.dil_y);
        let tx = i32(pix % p.w + p.pad_x) - i32((tt % p.kw) * p.dil_x);
        if (ty < 0 || tx < 0) {
            return 0.0;
        }
        let uy = u32(ty);
        let ux = u32(tx);
        if (uy % p.stride_y != 0u || ux % p.stride_x != 0u) {
            return 0.0;
        }
        let oy = uy / p.stride_y;
        let ox = ux / p.stride_x;
        if (oy >= p.oh || ox >= p.ow) {
            return 0.0;
        }
        return in0[((n * p.o + g * og() + oc) * p.oh + oy) * p.ow + ox];
    }
    return x_at(k / pixels(), g, col, k % pixels());
}

fn store(r: u32, col: u32, g: u32, v: f32) {
    if (MODE == 0u) {
        let n = col / pixels();
        out[(n * p.o + g * og() + r) * pixels() + col % pixels()] = v;
    } else if (MODE == 1u) {
        let hw = p.h * p.w;
        let n = col / hw;
        out[(n * p.c + g * cg() + r) * hw + col % hw] = v;
    } else {
        out[(g * og() + r) * cg() * taps() + col] = v;
    }
}

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>) {
    let s = sizes();
    let g = wid.z;
    let nt = (s.y + TILE - 1u) / TILE;
    let t = wid.y * nwg.x + wid.x;
    // Past the last tile every row is >= s.x: nothing is loaded or stored, barriers still met.
    let m0 = (t / nt) * TILE;
    let n0 = (t % nt) * TILE;
    let tid = lid.y * 16u + lid.x;
    // The right operand is loaded in the order it is contiguous in (coalescing): along k
    // for grad weight (k runs over pixels), along its columns (pixels) otherwise. The left
    // one is contiguous along k in every mode.
    let b_k_fast = MODE == 2u;

    var acc: array<vec4<f32>, 4>;
    for (var k0 = 0u; k0 < s.z; k0 = k0 + TK) {
        for (var q = 0u; q < 4u; q = q + 1u) {
            let e = tid + q * 256u;
            let r = e / TK;
            var kk = e % TK;
            var va = 0.0;
            if (m0 + r < s.x && k0 + kk < s.z) {
                va = load_a(m0 + r, k0 + kk, g);
            }
            ta[kk * TILE + r] = va;
            var col = e % TILE;
            kk = e / TILE;
            if (b_k_fast) {
                col = e / TK;
                kk = e % TK;
            }
            var vb = 0.0;
            if (n0 + col < s.y && k0 + kk < s.z) {
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
    for (var i = 0u; i < 4u; i = i + 1u) {
        let row = m0 + lid.y + 16u * i;
        for (var j = 0u; j < 4u; j = j + 1u) {
            let col = n0 + lid.x + 16u * j;
            if (row < s.x && col < s.y) {
                store(row, col, g, acc[i][j]);
            }
        }
    }
}
