// The elementwise template: src/ops/elementwise.rs fills in the bindings and the expression
// from its table (src/ops/elementwise/unary_fn.rs: one WGSL snippet per function), so one
// file serves every activation, its gradient and the broadcasting binary ops. The helpers
// below are what those snippets may call.
//
// Broadcasting: output element i has coordinates in `dims`; input k reads at the dot product
// of those coordinates with its `strides` (0 along a broadcast dimension). rank 0 means all
// tensors have the output's shape and element i is read at i.

struct Params {
    n: u32,
    rank: u32,
    // The function's constant (leaky relu's slope).
    alpha: f32,
    _pad: u32,
    dims: array<vec4<u32>, 2>,
    strides_a: array<vec4<u32>, 2>,
    strides_b: array<vec4<u32>, 2>,
}

@group(0) @binding(0) var<uniform> p: Params;

//BINDINGS

fn at(v: array<vec4<u32>, 2>, k: u32) -> u32 {
    return v[k / 4u][k % 4u];
}

// Offsets of output element i in inputs a and b.
fn offsets(i: u32) -> vec2<u32> {
    if (p.rank == 0u) {
        return vec2<u32>(i, i);
    }
    var rest = i;
    var oa = 0u;
    var ob = 0u;
    for (var k = p.rank; k > 0u; k = k - 1u) {
        let d = at(p.dims, k - 1u);
        let c = rest % d;
        rest = rest / d;
        oa = oa + c * at(p.strides_a, k - 1u);
        ob = ob + c * at(p.strides_b, k - 1u);
    }
    return vec2<u32>(oa, ob);
}

// erf to within 1.5e-7 (Abramowitz and Stegun 7.1.26): WGSL has no erf.
fn erf(x: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.3275911 * abs(x));
    let y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t
        + 0.254829592) * t * exp(-x * x);
    return select(-y, y, x >= 0.0);
}

// tanh that cannot overflow to NaN on backends that expand it through exp.
fn tanh_safe(x: f32) -> f32 {
    return tanh(clamp(x, -15.0, 15.0));
}

fn sigmoid(x: f32) -> f32 {
    return 1.0 / (1.0 + exp(-x));
}

// silu's derivative, sigmoid(x) * (1 + x * (1 - sigmoid(x))), with sigmoid evaluated once.
fn silu_grad(x: f32) -> f32 {
    let s = sigmoid(x);
    return s * (1.0 + x * (1.0 - s));
}

fn gelu(x: f32) -> f32 {
    return 0.5 * x * (1.0 + erf(x * 0.70710678118654752));
}

fn gelu_grad(x: f32) -> f32 {
    return 0.5 * (1.0 + erf(x * 0.70710678118654752)) + x * exp(-0.5 * x * x) * 0.39894228040143268;
}

fn gelu_tanh(x: f32) -> f32 {
    return 0.5 * x * (1.0 + tanh_safe(0.7978845608028654 * (x + 0.044715 * x * x * x)));
}

fn gelu_tanh_grad(x: f32) -> f32 {
    let t = tanh_safe(0.7978845608028654 * (x + 0.044715 * x * x * x));
    let du = 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * x * x);
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du;
}

fn f(a: f32, b: f32) -> f32 {
    return /*EXPR*/;
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid);
    if (i >= p.n) {
        return;
    }
    let o = offsets(i);
    //BODY
}
