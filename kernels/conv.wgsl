// 2-D convolution and its two gradients as implicit GEMMs (src/ops/conv.rs), operands for
// kernels/gemm.wgsl: the im2col matrix is never stored; each tile load computes the input
// pixel it stands for. One GEMM per group, `MODE` choosing the operands (conv.rs substitutes
// it per op, so each op compiles to its own specialised module):
//   0 forward:     y_g [og, N*P]     = w_g [og, cg*kh*kw]  · cols [cg*kh*kw, N*P]
//   1 grad input:  dx_g [cg, N*HU*WU] = w_gᵀ [cg, og*NT] · dy gathered [og*NT, N*HU*WU]
//                  for one stride phase (py, px) of the input pixels
//   2 grad weight: dw_g [og, cg*kh*kw] = dy_g [og, N*P]    · colsᵀ [N*P, cg*kh*kw]
// where P = OH*OW. Grad input gathers, for each input pixel and tap, the output pixel that
// read it, so no sum is scattered. At stride s only the taps with (py + pad - ki·dil) ≡ 0
// (mod s) reach pixels of row phase py (iy = py + s·u): conv.rs launches one GEMM per phase
// (py, px), over its HU x WU pixels and its NT = nky x nkx taps (ki = ki0 + ks_y·i, likewise
// kj), so no multiply-add is spent on the zeros a stride leaves. Grad weight's inner dim
// (images × pixels, up to 100k) is where split-K pays.

const MODE: u32 = 0u;
// 1 where the forward reads w from a transposed copy, [cg*kh*kw, o] (groups = 1 only): an
// operand that runs along the rows stages faster than one along the inner dim (conv.rs).
const W_T: u32 = 0u;

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
    // Grad input's stride phase: its first pixel, its size, and its taps along each dim.
    py: u32,
    px: u32,
    hu: u32,
    wu: u32,
    ki0: u32,
    ks_y: u32,
    nky: u32,
    kj0: u32,
    ks_x: u32,
    nkx: u32,
    k_chunk: u32,
    slices: u32,
    slice_words: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// forward: x, w; grad input: dy, w; grad weight: x, dy.
@group(0) @binding(2) var<storage, read_write> in0: array<f32>;
// Read as vec4s where rows of w (forward) or images of dy (grad weight) are whole vec4s.
@group(0) @binding(3) var<storage, read_write> in1: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

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
        return vec3<u32>(cg(), p.n * p.hu * p.wu, og() * p.nky * p.nkx);
    }
    return vec3<u32>(og(), cg() * taps(), np);
}

// x[n, g*cg + ci, ...] at output pixel `pix` of image n and tap `t` (ci, ki, kj), or 0 in the
// padding.
fn x_at(n: u32, g: u32, t: u32, pix: u32) -> f32 {
    let at = x_source(t, pix);
    let iy = at.y;
    let ix = at.z;
    if (iy < 0 || ix < 0 || iy >= i32(p.h) || ix >= i32(p.w)) {
        return 0.0;
    }
    return in0[((n * p.c + g * cg() + u32(at.x)) * p.h + u32(iy)) * p.w + u32(ix)];
}

// The input pixel tap `t` (ci, ki, kj) of output pixel `pix` reads: (ci, iy, ix), iy and ix
// outside the image in the padding.
fn x_source(t: u32, pix: u32) -> vec3<i32> {
    let tt = t % taps();
    let ki = tt / p.kw;
    let kj = tt % p.kw;
    let iy = i32((pix / p.ow) * p.stride_y + ki * p.dil_y) - i32(p.pad_y);
    let ix = i32((pix % p.ow) * p.stride_x + kj * p.dil_x) - i32(p.pad_x);
    return vec3<i32>(i32(t / taps()), iy, ix);
}

// Grad input: taps per output channel in the phase's inner dim. A phase no tap reaches has
// an empty inner dim (its pixels get zeros); the divisors stay nonzero for the compiler.
fn phase_taps() -> u32 {
    return max(p.nky * p.nkx, 1u);
}

// Grad input: the phase's tap t as (ki, kj).
fn phase_tap(t: u32) -> vec2<u32> {
    let nkx = max(p.nkx, 1u);
    return vec2<u32>(p.ki0 + p.ks_y * (t / nkx), p.kj0 + p.ks_x * (t % nkx));
}

// Grad input: column col of the phase's GEMM as (image, input row, input column).
fn phase_pixel(col: u32) -> vec3<u32> {
    let n = col / (p.hu * p.wu);
    let pix = col % (p.hu * p.wu);
    return vec3<u32>(n, p.py + p.stride_y * (pix / p.wu), p.px + p.stride_x * (pix % p.wu));
}

// The GEMM's left operand at (row r, inner k) of group g; r and k in range.
fn load_a(r: u32, k: u32, g: u32) -> f32 {
    if (MODE == 0u) {
        return w1(a_index(r, k, g));
    } else if (MODE == 1u) {
        // w [o, ci, ki, kj] at o = k / NT, ci = r, (ki, kj) the phase's tap k % NT.
        let kk = phase_tap(k % phase_taps());
        return w1(((g * og() + k / phase_taps()) * cg() + r) * taps() + kk.x * p.kw + kk.y);
    }
    return w1(a_index(r, k, g));
}

fn w1(i: u32) -> f32 {
    return in1[i / 4u][i % 4u];
}

// Forward: w [g*og + r, k]; grad weight: dy [n, g*og + r, pix] at k = n*P + pix.
fn a_index(r: u32, k: u32, g: u32) -> u32 {
    if (MODE == 0u && W_T == 1u) {
        return k * p.o + r;
    }
    if (MODE == 0u) {
        return (g * og() + r) * cg() * taps() + k;
    }
    return ((k / pixels()) * p.o + g * og() + r) * pixels() + k % pixels();
}

// Whether four values of A along k from a multiple of 4 are one vec4 of in1.
fn a_vec() -> bool {
    if (MODE == 0u && W_T == 1u) {
        return p.o % 4u == 0u;
    }
    if (MODE == 0u) {
        return (cg() * taps()) % 4u == 0u;
    }
    return MODE == 2u && pixels() % 4u == 0u;
}
fn load_a4(r: u32, k: u32, g: u32) -> vec4<f32> {
    return in1[a_index(r, k, g) / 4u];
}
// B's quads (four pixels along an output row for grad weight, along a phase's row of input
// pixels for grad input) share their index arithmetic: one division by the kernel and image
// sizes, not four. Not for the forward: on the H100 its 64-channel convolutions ran 28% slower
// with them (docs/performance.md, session 9), the larger ones no faster.
fn b_vec() -> bool {
    if (MODE == 1u) {
        return p.wu % 4u == 0u;
    }
    return MODE == 2u && p.ow % 4u == 0u;
}
fn load_b4(k: u32, col: u32, g: u32) -> vec4<f32> {
    if (MODE == 1u) {
        return dy_at4(k, col, g);
    }
    return x_at4(k / pixels(), g, col, k % pixels());
}

// x_at at output pixels pix..pix + 3 of one output row (pix a multiple of 4, OW too).
fn x_at4(n: u32, g: u32, t: u32, pix: u32) -> vec4<f32> {
    let at = x_source(t, pix);
    var v = vec4<f32>(0.0);
    if (at.y < 0 || at.y >= i32(p.h)) {
        return v;
    }
    let row = ((n * p.c + g * cg() + u32(at.x)) * p.h + u32(at.y)) * p.w;
    for (var d = 0u; d < 4u; d = d + 1u) {
        let x = at.z + i32(d * p.stride_x);
        if (x >= 0 && x < i32(p.w)) {
            v[d] = in0[row + u32(x)];
        }
    }
    return v;
}

// Grad input's load_b at columns col..col + 3 of one row of the phase's pixels (col a multiple
// of 4, WU too): consecutive pixels of a phase read consecutive output columns.
fn dy_at4(k: u32, col: u32, g: u32) -> vec4<f32> {
    let px = phase_pixel(col);
    let oc = k / phase_taps();
    let kk = phase_tap(k % phase_taps());
    var v = vec4<f32>(0.0);
    let ty = i32(px.y + p.pad_y) - i32(kk.x * p.dil_y);
    if (ty < 0) {
        return v;
    }
    let oy = u32(ty) / p.stride_y;
    if (oy >= p.oh) {
        return v;
    }
    let row = ((px.x * p.o + g * og() + oc) * p.oh + oy) * p.ow;
    for (var d = 0u; d < 4u; d = d + 1u) {
        let tx = i32(px.z + d * p.stride_x + p.pad_x) - i32(kk.y * p.dil_x);
        if (tx >= 0) {
            let ox = u32(tx) / p.stride_x;
            if (ox < p.ow) {
                v[d] = in0[row + ox];
            }
        }
    }
    return v;
}

// The GEMM's right operand at (inner k, column col) of group g; both in range.
fn load_b(k: u32, col: u32, g: u32) -> f32 {
    if (MODE == 0u) {
        return x_at(col / pixels(), g, k, col % pixels());
    } else if (MODE == 1u) {
        // dy at the output pixel whose tap reads input pixel col of the phase, if any: the
        // phase's taps divide exactly, so only the image's edges leave it out.
        let px = phase_pixel(col);
        let oc = k / phase_taps();
        let kk = phase_tap(k % phase_taps());
        let ty = i32(px.y + p.pad_y) - i32(kk.x * p.dil_y);
        let tx = i32(px.z + p.pad_x) - i32(kk.y * p.dil_x);
        if (ty < 0 || tx < 0) {
            return 0.0;
        }
        let oy = u32(ty) / p.stride_y;
        let ox = u32(tx) / p.stride_x;
        if (oy >= p.oh || ox >= p.ow) {
            return 0.0;
        }
        let n = px.x;
        return in0[((n * p.o + g * og() + oc) * p.oh + oy) * p.ow + ox];
    }
    return x_at(k / pixels(), g, col, k % pixels());
}

// Where (row r, column col) of group g's GEMM lives in out.
fn out_index(r: u32, col: u32, g: u32) -> u32 {
    if (MODE == 0u) {
        let n = col / pixels();
        return (n * p.o + g * og() + r) * pixels() + col % pixels();
    } else if (MODE == 1u) {
        let px = phase_pixel(col);
        return ((px.x * p.c + g * cg() + r) * p.h + px.y) * p.w + px.z;
    }
    return (g * og() + r) * cg() * taps() + col;
}

// The left operand is contiguous along k in every mode but the forward's transposed w; the
// right one along k for grad weight (k runs over pixels), along its columns (pixels) otherwise.
fn a_k_fast() -> bool {
    return !(MODE == 0u && W_T == 1u);
}
fn b_k_fast() -> bool {
    return MODE == 2u;
}
