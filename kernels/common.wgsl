// Shared by every kernel (prepended by the executor; see src/backend/gpu/kernel.rs).

// Runtime scalars of one step, written once per step.
struct Step {
    lr: f32,
    // Optimizer step count, 1 on the first step.
    step: u32,
    seed_lo: u32,
    seed_hi: u32,
}

@group(0) @binding(1) var<uniform> step: Step;

const WORKGROUP: u32 = 256u;

// The linear index of this thread in a grid folded into x and y (kernel.rs `grid`).
fn linear_index(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.y * nwg.x + wid.x) * WORKGROUP + lid.x;
}
