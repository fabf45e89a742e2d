// Dropout (src/ops/random.rs): the CPU's counter-based mask, bit for bit. The key depends on
// the runtime seed and step, so each thread derives it (eight hashes, cheap next to a load).

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

// lowbias32 (random.rs `hash32`); u32 multiplication wraps in WGSL.
fn hash32(v: u32) -> u32 {
    var h = v;
    h = h ^ (h >> 16u);
    h = h * 0x7feb352du;
    h = h ^ (h >> 15u);
    h = h * 0x846ca68bu;
    h = h ^ (h >> 16u);
    return h;
}

// b0 x, b1 y = x · (kept ? scale : 0). `DropoutKey::new(seed, step, stream)` absorbs the six
// words of (seed, step, stream), low word first; the step's high word is 0 on the GPU.
@compute @workgroup_size(256)
fn dropout(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid);
    if (i >= p.n) {
        return;
    }
    var h = 0x9e3779b9u;
    h = hash32(h ^ step.seed_lo);
    h = hash32(h ^ step.seed_hi);
    h = hash32(h ^ step.step);
    h = hash32(h ^ 0u);
    h = hash32(h ^ p.stream_lo);
    h = hash32(h ^ p.stream_hi);
    let k1 = h;
    let k2 = hash32(h ^ 0x85ebca6bu);
    // `DropoutKey::bits24`: the element index's high word is 0 (a binding holds < 2^32).
    let bits = hash32(hash32(hash32(i ^ k1) ^ 0u) ^ k2) >> 8u;
    y[i] = x[i] * select(0.0, p.scale, bits >= p.threshold);
}
