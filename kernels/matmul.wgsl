// Strided GEMM operands for kernels/gemm.wgsl: out[g, m, n] = sum_k a[g, m, k] * b[g, k, n],
// with a and b read through group, row and column strides, so one kernel serves x·wᵀ, dy·w,
// dyᵀ·x and batched products of two activations (src/ops/matmul.rs). out is row-major, one
// [m, n] matrix per group. a and b are read as vec4s where the stride across their contiguous
// dim and the group stride are multiples of 4 (bindings are whole vec4s: kernel::gpu).

struct Params {
    m: u32,
    n: u32,
    k: u32,
    // Strides of a along m and k, of b along k and n.
    a_m: u32,
    a_k: u32,
    b_k: u32,
    b_n: u32,
    // Strides of a and b from one group to the next (0 for a single product).
    a_g: u32,
    b_g: u32,
    // 1 where the operand is contiguous along k.
    a_contiguous_k: u32,
    b_contiguous_k: u32,
    k_chunk: u32,
    slices: u32,
    slice_words: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read_write> a: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> b: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

fn sizes() -> vec3<u32> {
    return vec3<u32>(p.m, p.n, p.k);
}
fn a_k_fast() -> bool {
    return p.a_contiguous_k == 1u;
}
fn b_k_fast() -> bool {
    return p.b_contiguous_k == 1u;
}
fn a_vec() -> bool {
    return (select(p.a_k, p.a_m, a_k_fast()) | p.a_g) % 4u == 0u;
}
fn b_vec() -> bool {
    return (select(p.b_n, p.b_k, b_k_fast()) | p.b_g) % 4u == 0u;
}
fn load_a(r: u32, k: u32, g: u32) -> f32 {
    let i = g * p.a_g + r * p.a_m + k * p.a_k;
    return a[i / 4u][i % 4u];
}
fn load_b(k: u32, col: u32, g: u32) -> f32 {
    let i = g * p.b_g + k * p.b_k + col * p.b_n;
    return b[i / 4u][i % 4u];
}
// Four values along the contiguous dim from a multiple of 4 (where a_vec / b_vec).
fn load_a4(r: u32, k: u32, g: u32) -> vec4<f32> {
    return a[(g * p.a_g + r * p.a_m + k * p.a_k) / 4u];
}
fn load_b4(k: u32, col: u32, g: u32) -> vec4<f32> {
    return b[(g * p.b_g + k * p.b_k + col * p.b_n) / 4u];
}
fn out_index(r: u32, col: u32, g: u32) -> u32 {
    return (g * p.m + r) * p.n + col;
}
