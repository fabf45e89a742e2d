// Shared by every kernel (prepended by the executor; see src/backend/gpu/kernel.rs).

// Runtime scalars of one step, written once per step.
struct Step {
    lr: f32,
    // Optimizer step count, 1 on the first step.
    step: u32,
    seed_lo: u32,
    seed_hi: u32,
    // Always 0 (see `stored`).
    zero: u32,
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(1) var<uniform> step: Step;

const WORKGROUP: u32 = 256u;

// The linear index of this thread in a grid folded into x and y (kernel.rs `grid`).
fn linear_index(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.y * nwg.x + wid.x) * WORKGROUP + lid.x;
}

// v as storing it to memory rounds it, for a fused kernel at each value its unfused launches
// would have stored. A driver may contract a·b + c into one fma, or rearrange arithmetic it can
// see across (Vulkan allows the first, NVIDIA's driver does both): the fused kernel would then
// round differently from the launches it replaces. No compiler can know that `step.zero` is 0,
// so it must form v's bits here.
fn stored(v: f32) -> f32 {
    return bitcast<f32>(bitcast<u32>(v) | step.zero);
}
