// The elementwise template: src/ops/elementwise.rs fills in the bindings and the expression
// from its table (src/ops/elementwise/unary_fn.rs: one WGSL snippet per function), so one
// file serves every activation, its gradient and the broadcasting binary ops. The helpers
// those snippets may call (kernels/elementwise_fns.wgsl) go in at the FNS marker, as in the fused
// chains' kernels (src/ops/elementwise/chain.rs).
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

//FNS

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
