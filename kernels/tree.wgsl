// Fixed-order workgroup reductions shared by the sectioned kernel files (`section` in
// src/kernel/gpu/mod.rs prepends this): no atomics, so the same inputs give the same bits.
// Where the device has subgroups, the executor builds kernels with tree_subgroup.wgsl in place
// of this file: the same `Lanes`, `tree_sum` and `tree_max`, fewer barriers.

// Where a thread sits in its workgroup (an entry point's parameter: builtins reach only
// entry points, and the subgroup variant needs more of them).
struct Lanes {
    @builtin(local_invocation_index) index: u32,
}

var<workgroup> tree_red: array<vec2<f32>, WORKGROUP>;

// The workgroup's total of `v` (both lanes), in a fixed tree order; every thread gets it.
// Call from uniform control flow with all WORKGROUP threads.
fn tree_sum(lanes: Lanes, v: vec2<f32>) -> vec2<f32> {
    let lid = lanes.index;
    tree_red[lid] = v;
    workgroupBarrier();
    for (var half = WORKGROUP / 2u; half > 0u; half = half / 2u) {
        if (lid < half) {
            tree_red[lid] = tree_red[lid] + tree_red[lid + half];
        }
        workgroupBarrier();
    }
    let total = tree_red[0];
    // Nobody may overwrite tree_red[0] before everyone has read it.
    workgroupBarrier();
    return total;
}

// The workgroup's maximum of `v`, as `tree_sum`.
fn tree_max(lanes: Lanes, v: f32) -> f32 {
    let lid = lanes.index;
    tree_red[lid] = vec2<f32>(v, 0.0);
    workgroupBarrier();
    for (var half = WORKGROUP / 2u; half > 0u; half = half / 2u) {
        if (lid < half) {
            tree_red[lid].x = max(tree_red[lid].x, tree_red[lid + half].x);
        }
        workgroupBarrier();
    }
    let total = tree_red[0].x;
    workgroupBarrier();
    return total;
}
