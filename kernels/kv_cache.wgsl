// The key/value cache of autoregressive decoding (src/ops/kv_cache.rs): attention of one new
// position per sequence over cached keys and values, and the write of its own key and value.
//
// attention_decode: one workgroup per (batch row b, head h). Keys are taken WORKGROUP at a time
// (a chunk): thread t scores key j0 + t (its dot product with q, in element order); the chunk's
// maximum and sum of exp(s − m) come from the fixed-order tree reductions (tree.wgsl or its
// subgroup form), and the weights go through workgroup memory to threads t < D, each of which
// owns output element t and adds the chunk's weighted values in key order: an online softmax
// whose every sum runs in one order, so the same inputs give the same bits. Keys before the
// position come from the caches, the position's own from qkv. Workgroup memory: q (D ≤ 128
// floats), the chunk's weights (WORKGROUP floats), the tree's scratch and one word.
//
// Compiled per head width: const D (the op's Rust prepends it).

struct Params {
    batch: u32,
    heads: u32,
    // Width of the heads side by side (heads · D).
    c: u32,
    // Rows of each cache (the model's positions).
    positions: u32,
    scale: f32,
    nan: f32,
}

@group(0) @binding(0) var<uniform> p: Params;

// b_k is Dispatch::bindings[k]; each entry says what it binds.
@group(0) @binding(2) var<storage, read_write> b0: array<f32>;
@group(0) @binding(3) var<storage, read_write> b1: array<f32>;
@group(0) @binding(4) var<storage, read_write> b2: array<f32>;
@group(0) @binding(5) var<storage, read_write> b3: array<f32>;
@group(0) @binding(6) var<storage, read_write> b4: array<f32>;
@group(0) @binding(7) var<storage, read_write> b5: array<f32>;

// Below every real score: the running maximum before the first chunk.
const LOWEST: f32 = -3.0e38;

var<workgroup> q_row: array<f32, D>;
var<workgroup> weights: array<f32, WORKGROUP>;
var<workgroup> raw_position: f32;

// The cache row a position id picks, or `positions` (none) outside [0, positions) and for NaN.
fn position_of(id: f32) -> u32 {
    if (id >= 0.0 && id < f32(p.positions)) {
        return u32(id);
    }
    return p.positions;
}

// Element d of the key (which 1) or value (2) of head h at position j of row b: cache b1 or b2
// before the new position n, qkv b0 at it.
fn kv(b: u32, h: u32, j: u32, n: u32, which: u32, d: u32) -> f32 {
    if (j == n) {
        return b0[b * 3u * p.c + which * p.c + h * D + d];
    }
    let at = ((b * p.heads + h) * p.positions + j) * D + d;
    if (which == 1u) {
        return b1[at];
    }
    return b2[at];
}

// b0 qkv [B, 1, 3C], b1 key cache, b2 value cache [B, heads, positions, D], b3 positions [B, 1];
// b4 y [B, 1, C], b5 lse [B, heads, 1].
@compute @workgroup_size(256)
fn attention_decode(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_id) lid3: vec3<u32>, lanes: Lanes) {
    // Uniform across the workgroup, so the early returns keep barriers uniform.
    let g = wid.y * nwg.x + wid.x;
    if (g >= p.batch * p.heads) {
        return;
    }
    let b = g / p.heads;
    let h = g % p.heads;
    let t = lid3.x;
    if (t == 0u) {
        raw_position = b3[b];
    }
    let n = position_of(workgroupUniformLoad(&raw_position));
    if (n >= p.positions) {
        if (t < D) {
            b4[b * p.c + h * D + t] = p.nan;
        }
        if (t == 0u) {
            b5[g] = p.nan;
        }
        return;
    }
    if (t < D) {
        q_row[t] = b0[b * 3u * p.c + h * D + t];
    }
    workgroupBarrier();
    var m = LOWEST;
    var sum = 0.0;
    var acc = 0.0;
    for (var j0 = 0u; j0 <= n; j0 = j0 + WORKGROUP) {
        let j = j0 + t;
        let live = j <= n;
        var s = LOWEST;
        if (live) {
            var dot = 0.0;
            for (var d = 0u; d < D; d = d + 1u) {
                dot = dot + q_row[d] * kv(b, h, j, n, 1u, d);
            }
            s = dot * p.scale;
        }
        let next = max(m, tree_max(lanes, s));
        var e = 0.0;
        if (live) {
            e = exp(s - next);
        }
        weights[t] = e;
        let chunk = tree_sum(lanes, vec2<f32>(e, 0.0)).x;
        let rescale = exp(m - next);
        sum = sum * rescale + chunk;
        // tree_sum's barriers made every weight visible.
        if (t < D) {
            var a = 0.0;
            let count = min(WORKGROUP, n + 1u - j0);
            for (var k = 0u; k < count; k = k + 1u) {
                a = a + weights[k] * kv(b, h, j0 + k, n, 2u, t);
            }
            acc = acc * rescale + a;
        }
        m = next;
        // Nobody overwrites the weights before everyone has read them.
        workgroupBarrier();
    }
    if (t < D) {
        b4[b * p.c + h * D + t] = acc / sum;
    }
    if (t == 0u) {
        b5[g] = m + log(sum);
    }
}

// b0 qkv [B, 1, 3C], b1 positions [B, 1]; b2 key cache, b3 value cache [B, heads, positions, D]:
// one thread per element of the new position's key and value (B · C), writing only row pos[b].
@compute @workgroup_size(256)
fn cache_write(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid);
    if (i >= p.batch * p.c) {
        return;
    }
    let b = i / p.c;
    let e = i % p.c;
    let n = position_of(b1[b]);
    if (n >= p.positions) {
        return;
    }
    let at = ((b * p.heads + e / D) * p.positions + n) * D + e % D;
    b2[at] = b0[b * 3u * p.c + p.c + e];
    b3[at] = b0[b * 3u * p.c + 2u * p.c + e];
}
