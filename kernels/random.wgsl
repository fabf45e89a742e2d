// Dropout (src/ops/random.rs): the CPU's counter-based mask, bit for bit (dropout_mask.wgsl,
// prepended).

struct Params {
    n: u32,
    // The smallest 24-bit draw kept: ceil(p · 2^24).
    threshold: u32,
    stream_lo: u32,
    stream_hi: u32,
    // 1 / (1 − p), or 0 at p = 1.
    scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read_write> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

// b0 x, b1 y = x · (kept ? scale : 0).
@compute @workgroup_size(256)
fn dropout(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid);
    if (i >= p.n) {
        return;
    }
    let bits = dropout_bits(dropout_key(p.stream_lo, p.stream_hi), i);
    y[i] = x[i] * select(0.0, p.scale, bits >= p.threshold);
}
