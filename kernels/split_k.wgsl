// Split-K's second pass (src/kernel/gpu/gemm.rs): out[i] = the slices' partials at i, added in
// slice order by one thread, so the sum is the same every run; then finished as the core
// finishes an unsplit sum (kernels/gemm.wgsl `finish`: a matmul's bias and activation).

struct Params {
    n: u32,
    slices: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read_write> parts: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

fn finish(v: f32, o: u32) -> f32 {
    return v;
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid);
    if (i >= p.n) {
        return;
    }
    var acc = parts[i];
    for (var s = 1u; s < p.slices; s = s + 1u) {
        acc = acc + parts[s * p.n + i];
    }
    out[i] = finish(acc, i);
}
