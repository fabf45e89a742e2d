// Fixed-order workgroup reductions shared by the sectioned kernel files (reduce.rs `section`
// prepends this): no atomics, so the same inputs give the same bits.

var<workgroup> red: array<vec2<f32>, 256>;

// The workgroup's total of `v` (both lanes), in a fixed tree order; every thread gets it.
// Call from uniform control flow with all WORKGROUP threads.
fn tree_sum(lid: u32, v: vec2<f32>) -> vec2<f32> {
    red[lid] = v;
    workgroupBarrier();
    for (var half = WORKGROUP / 2u; half > 0u; half = half / 2u) {
        if (lid < half) {
            red[lid] = red[lid] + red[lid + half];
        }
        workgroupBarrier();
    }
    let total = red[0];
    // Nobody may overwrite red[0] before everyone has read it.
    workgroupBarrier();
    return total;
}

// The workgroup's maximum of `v`, as `tree_sum`.
fn tree_max(lid: u32, v: f32) -> f32 {
    red[lid] = vec2<f32>(v, 0.0);
    workgroupBarrier();
    for (var half = WORKGROUP / 2u; half > 0u; half = half / 2u) {
        if (lid < half) {
            red[lid].x = max(red[lid].x, red[lid + half].x);
        }
        workgroupBarrier();
    }
    let total = red[0].x;
    workgroupBarrier();
    return total;
}
