// The dropout mask of src/ops/random.rs, bit for bit (prepended to kernels/random.wgsl and
// kernels/attention.wgsl). The key depends on the runtime seed and step, so each thread derives
// it (eight hashes, cheap next to a load).

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

// `DropoutKey::new(seed, step, stream)`: the six words of (seed, step, stream), low word first;
// the step's high word is 0 on the GPU. (k1, k2).
fn dropout_key(stream_lo: u32, stream_hi: u32) -> vec2<u32> {
    var h = 0x9e3779b9u;
    h = hash32(h ^ step.seed_lo);
    h = hash32(h ^ step.seed_hi);
    h = hash32(h ^ step.step);
    h = hash32(h ^ 0u);
    h = hash32(h ^ stream_lo);
    h = hash32(h ^ stream_hi);
    return vec2<u32>(h, hash32(h ^ 0x85ebca6bu));
}

// `DropoutKey::bits24` of element i (its high word 0: indices stay below 2^32).
fn dropout_bits(key: vec2<u32>, i: u32) -> u32 {
    return hash32(hash32(hash32(i ^ key.x) ^ 0u) ^ key.y) >> 8u;
}
