// Fused attention (src/ops/attention.rs): FlashAttention-2's forward and backward over a fused
// projection qkv [B, T, 3C] with `heads` heads of width D. The T×T scores are never stored: each
// pass recomputes them tile by tile.
//
// One thread per query row (forward, dQ) or key row (dV, dK), BLOCK rows per workgroup, the
// other side's rows staged through workgroup memory TILE at a time and read by every thread
// (broadcast reads). A thread keeps its own row and its accumulators in registers (vec4s), so no
// value is shared between threads and every sum runs in one fixed order: the same inputs give the
// same bits. The backward splits like metal-flash-attention's: dQ per query row, dK and dV per key
// row, so no float atomics are needed; dQ's pass also writes Δ_i = dy_i·y_i for the other two.
// Dropout on the weights drops (i, j) by the dropout op's mask (dropout_mask.wgsl, prepended),
// which every pass recomputes.
//
// Compiled per head width (the op's Rust prepends them): const D (head width), D4 (vec4s per
// row, ⌈D/4⌉; the padding lanes hold 0), TILE (rows staged at a time: 32 KiB of workgroup memory
// at most, Metal's limit).

struct Params {
    batch: u32,
    t: u32,
    c: u32,
    heads: u32,
    // Row blocks of BLOCK rows per (batch row, head).
    blocks: u32,
    causal: u32,
    scale: f32,
    // Dropout on the weights: the smallest 24-bit draw kept (0: no dropout), the stream, and
    // 1 / (1 − p) (0 at p = 1).
    threshold: u32,
    stream_lo: u32,
    stream_hi: u32,
    keep: f32,
}

@group(0) @binding(0) var<uniform> p: Params;

// b_k is Dispatch::bindings[k]; each entry names what it binds.
@group(0) @binding(2) var<storage, read_write> b0: array<f32>;
@group(0) @binding(3) var<storage, read_write> b1: array<f32>;
@group(0) @binding(4) var<storage, read_write> b2: array<f32>;
@group(0) @binding(5) var<storage, read_write> b3: array<f32>;
@group(0) @binding(6) var<storage, read_write> b4: array<f32>;
@group(0) @binding(7) var<storage, read_write> b5: array<f32>;

const BLOCK: u32 = 64u;

var<workgroup> tile_a: array<vec4<f32>, TILE * D4>;
var<workgroup> tile_b: array<vec4<f32>, TILE * D4>;
// Per staged query row: (lse, Δ) (the key-side passes).
var<workgroup> tile_r: array<vec2<f32>, TILE>;

// What a workgroup works on: batch row b, head h, its rows [first, first + BLOCK).
struct Job {
    b: u32,
    h: u32,
    first: u32,
    live: bool,
}

fn job(wid: vec3<u32>, nwg: vec3<u32>) -> Job {
    let g = wid.y * nwg.x + wid.x;
    let bh = g / p.blocks;
    return Job(bh / p.heads, bh % p.heads, (g % p.blocks) * BLOCK, bh < p.batch * p.heads);
}

// Word of element d of q (which 0), k (1) or v (2) of head h at position t of batch row b.
fn qkv_at(b: u32, t: u32, which: u32, h: u32, d: u32) -> u32 {
    return (b * p.t + t) * 3u * p.c + which * p.c + h * D + d;
}

// Word of element d of head h at position t of batch row b in y, dy [B, T, C].
fn y_at(b: u32, t: u32, h: u32, d: u32) -> u32 {
    return (b * p.t + t) * p.c + h * D + d;
}

// Word of (b, h, t) in lse and Δ [B, heads, T].
fn row_at(b: u32, h: u32, t: u32) -> u32 {
    return (b * p.heads + h) * p.t + t;
}

// Dropout's factor of weight (i, j): 1 / (1 − p) where kept, 0 where dropped, 1 without dropout;
// element ((b·heads + h)·T + i)·T + j of the stream `key` (src/ops/attention.rs).
fn kept(key: vec2<u32>, jb: Job, i: u32, j: u32) -> f32 {
    if (p.threshold == 0u) {
        return 1.0;
    }
    let k = ((jb.b * p.heads + jb.h) * p.t + i) * p.t + j;
    return select(0.0, p.keep, dropout_bits(key, k) >= p.threshold);
}

// Whether query i sees key j.
fn sees(i: u32, j: u32) -> bool {
    return j < p.t && (p.causal == 0u || j <= i);
}

// 4 elements of q/k/v `which` from element 4·e of a row (0 past D or past T).
fn qkv4(b: u32, t: u32, which: u32, h: u32, e: u32) -> vec4<f32> {
    var v = vec4<f32>(0.0);
    if (t < p.t) {
        for (var k = 0u; k < 4u; k = k + 1u) {
            let d = 4u * e + k;
            if (d < D) {
                v[k] = b0[qkv_at(b, t, which, h, d)];
            }
        }
    }
    return v;
}

// The same from y (from_dy false) or dy (true): b1 or b3 of the backward passes.
fn y4(b: u32, t: u32, h: u32, e: u32, from_dy: bool) -> vec4<f32> {
    var v = vec4<f32>(0.0);
    if (t < p.t) {
        for (var k = 0u; k < 4u; k = k + 1u) {
            let d = 4u * e + k;
            if (d < D) {
                if (from_dy) {
                    v[k] = b3[y_at(b, t, h, d)];
                } else {
                    v[k] = b1[y_at(b, t, h, d)];
                }
            }
        }
    }
    return v;
}

// Stages k and v of rows [r0, r0 + TILE) into tile_a and tile_b.
fn stage_keys(jb: Job, r0: u32, lid: u32) {
    for (var x = lid; x < TILE * D4; x = x + BLOCK) {
        let row = r0 + x / D4;
        tile_a[x] = qkv4(jb.b, row, 1u, jb.h, x % D4);
        tile_b[x] = qkv4(jb.b, row, 2u, jb.h, x % D4);
    }
}

// Stages q and dy of rows [r0, r0 + TILE) into tile_a and tile_b, their (lse, Δ) into tile_r;
// b2 lse, b5 Δ.
fn stage_queries(jb: Job, r0: u32, lid: u32) {
    for (var x = lid; x < TILE * D4; x = x + BLOCK) {
        let row = r0 + x / D4;
        tile_a[x] = qkv4(jb.b, row, 0u, jb.h, x % D4);
        tile_b[x] = y4(jb.b, row, jb.h, x % D4, true);
    }
    for (var x = lid; x < TILE; x = x + BLOCK) {
        let row = r0 + x;
        var r = vec2<f32>(0.0);
        if (row < p.t) {
            r = vec2<f32>(b2[row_at(jb.b, jb.h, row)], b5[row_at(jb.b, jb.h, row)]);
        }
        tile_r[x] = r;
    }
}

// Keys a block of queries sees: [0, end).
fn keys_end(jb: Job) -> u32 {
    return select(p.t, min(p.t, jb.first + BLOCK), p.causal != 0u);
}

// Queries a block of keys is seen by: [start, T).
fn queries_start(jb: Job) -> u32 {
    return select(0u, jb.first, p.causal != 0u);
}

// Forward: b0 qkv, b1 y [B, T, C], b2 lse [B, heads, T]. Online softmax over key tiles: the
// running max m and sum l rescale the accumulator once per tile.
@compute @workgroup_size(64)
fn attention_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_id) lid3: vec3<u32>) {
    let jb = job(wid, nwg);
    if (!jb.live) {
        return;
    }
    let lid = lid3.x;
    let i = jb.first + lid;
    var q: array<vec4<f32>, D4>;
    var o: array<vec4<f32>, D4>;
    for (var e = 0u; e < D4; e = e + 1u) {
        q[e] = qkv4(jb.b, i, 0u, jb.h, e);
        o[e] = vec4<f32>(0.0);
    }
    var m = -3.4028235e38;
    var l = 0.0;
    let key = dropout_key(p.stream_lo, p.stream_hi);
    let end = keys_end(jb);
    for (var j0 = 0u; j0 < end; j0 = j0 + TILE) {
        workgroupBarrier();
        stage_keys(jb, j0, lid);
        workgroupBarrier();
        var s: array<f32, TILE>;
        var mt = m;
        for (var jj = 0u; jj < TILE; jj = jj + 1u) {
            var acc = 0.0;
            for (var e = 0u; e < D4; e = e + 1u) {
                acc = acc + dot(q[e], tile_a[jj * D4 + e]);
            }
            s[jj] = acc * p.scale;
            if (sees(i, j0 + jj)) {
                mt = max(mt, s[jj]);
            }
        }
        let alpha = exp(m - mt);
        l = l * alpha;
        for (var e = 0u; e < D4; e = e + 1u) {
            o[e] = o[e] * alpha;
        }
        for (var jj = 0u; jj < TILE; jj = jj + 1u) {
            if (sees(i, j0 + jj)) {
                let pj = exp(s[jj] - mt);
                l = l + pj;
                let w = pj * kept(key, jb, i, j0 + jj);
                for (var e = 0u; e < D4; e = e + 1u) {
                    o[e] = o[e] + w * tile_b[jj * D4 + e];
                }
            }
        }
        m = mt;
    }
    if (i >= p.t) {
        return;
    }
    for (var e = 0u; e < D4; e = e + 1u) {
        for (var k = 0u; k < 4u; k = k + 1u) {
            let d = 4u * e + k;
            if (d < D) {
                b1[y_at(jb.b, i, jb.h, d)] = o[e][k] / l;
            }
        }
    }
    b2[row_at(jb.b, jb.h, i)] = m + log(l);
}

// dQ: b0 qkv, b1 y, b2 lse, b3 dy, b4 dqkv (its q columns), b5 Δ [B, heads, T] (written here for
// the key-side passes). dq_i = scale·Σ_j P_ij·(M_ij·dy_i·v_j − Δ_i)·k_j, P_ij = exp(s_ij − lse_i),
// M_ij dropout's factor.
@compute @workgroup_size(64)
fn attention_grad_q(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_id) lid3: vec3<u32>) {
    let jb = job(wid, nwg);
    if (!jb.live) {
        return;
    }
    let lid = lid3.x;
    let i = jb.first + lid;
    var q: array<vec4<f32>, D4>;
    var dy: array<vec4<f32>, D4>;
    var dq: array<vec4<f32>, D4>;
    var delta = 0.0;
    for (var e = 0u; e < D4; e = e + 1u) {
        q[e] = qkv4(jb.b, i, 0u, jb.h, e);
        dy[e] = y4(jb.b, i, jb.h, e, true);
        dq[e] = vec4<f32>(0.0);
        delta = delta + dot(dy[e], y4(jb.b, i, jb.h, e, false));
    }
    var lse = 0.0;
    let key = dropout_key(p.stream_lo, p.stream_hi);
    if (i < p.t) {
        lse = b2[row_at(jb.b, jb.h, i)];
        b5[row_at(jb.b, jb.h, i)] = delta;
    }
    let end = keys_end(jb);
    for (var j0 = 0u; j0 < end; j0 = j0 + TILE) {
        workgroupBarrier();
        stage_keys(jb, j0, lid);
        workgroupBarrier();
        for (var jj = 0u; jj < TILE; jj = jj + 1u) {
            if (sees(i, j0 + jj)) {
                var s = 0.0;
                var dp = 0.0;
                for (var e = 0u; e < D4; e = e + 1u) {
                    s = s + dot(q[e], tile_a[jj * D4 + e]);
                    dp = dp + dot(dy[e], tile_b[jj * D4 + e]);
                }
                let pj = exp(s * p.scale - lse);
                let ds = pj * (dp * kept(key, jb, i, j0 + jj) - delta);
                for (var e = 0u; e < D4; e = e + 1u) {
                    dq[e] = dq[e] + ds * tile_a[jj * D4 + e];
                }
            }
        }
    }
    if (i >= p.t) {
        return;
    }
    for (var e = 0u; e < D4; e = e + 1u) {
        for (var k = 0u; k < 4u; k = k + 1u) {
            let d = 4u * e + k;
            if (d < D) {
                b4[qkv_at(jb.b, i, 0u, jb.h, d)] = dq[e][k] * p.scale;
            }
        }
    }
}

// dK and dV: b0 qkv, b1 y (unused), b2 lse, b3 dy, b4 dqkv (its k and v columns), b5 Δ.
// dv_j = Σ_i M_ij·P_ij·dy_i; dk_j = scale·Σ_i P_ij·(M_ij·dy_i·v_j − Δ_i)·q_i (M: dropout's
// factors), over the queries i that see
// key j, in order. Two entries (`attention_grad_v`, `attention_grad_k`) of this one body, so a
// thread holds two rows of accumulators at most.
fn key_side(wid: vec3<u32>, nwg: vec3<u32>, lid: u32, want_k: bool) {
    let jb = job(wid, nwg);
    if (!jb.live) {
        return;
    }
    let j = jb.first + lid;
    var k: array<vec4<f32>, D4>;
    var v: array<vec4<f32>, D4>;
    var acc: array<vec4<f32>, D4>;
    for (var e = 0u; e < D4; e = e + 1u) {
        k[e] = qkv4(jb.b, j, 1u, jb.h, e);
        if (want_k) {
            v[e] = qkv4(jb.b, j, 2u, jb.h, e);
        }
        acc[e] = vec4<f32>(0.0);
    }
    let key = dropout_key(p.stream_lo, p.stream_hi);
    for (var i0 = queries_start(jb); i0 < p.t; i0 = i0 + TILE) {
        workgroupBarrier();
        stage_queries(jb, i0, lid);
        workgroupBarrier();
        for (var ii = 0u; ii < TILE; ii = ii + 1u) {
            let i = i0 + ii;
            if (i < p.t && j < p.t && sees(i, j)) {
                var s = 0.0;
                for (var e = 0u; e < D4; e = e + 1u) {
                    s = s + dot(tile_a[ii * D4 + e], k[e]);
                }
                let pj = exp(s * p.scale - tile_r[ii].x);
                let mij = kept(key, jb, i, j);
                if (want_k) {
                    var dp = 0.0;
                    for (var e = 0u; e < D4; e = e + 1u) {
                        dp = dp + dot(tile_b[ii * D4 + e], v[e]);
                    }
                    let ds = pj * (dp * mij - tile_r[ii].y);
                    for (var e = 0u; e < D4; e = e + 1u) {
                        acc[e] = acc[e] + ds * tile_a[ii * D4 + e];
                    }
                } else {
                    let w = pj * mij;
                    for (var e = 0u; e < D4; e = e + 1u) {
                        acc[e] = acc[e] + w * tile_b[ii * D4 + e];
                    }
                }
            }
        }
    }
    if (j >= p.t) {
        return;
    }
    let which = select(2u, 1u, want_k);
    let f = select(1.0, p.scale, want_k);
    for (var e = 0u; e < D4; e = e + 1u) {
        for (var c = 0u; c < 4u; c = c + 1u) {
            let d = 4u * e + c;
            if (d < D) {
                b4[qkv_at(jb.b, j, which, jb.h, d)] = acc[e][c] * f;
            }
        }
    }
}

@compute @workgroup_size(64)
fn attention_grad_v(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_id) lid3: vec3<u32>) {
    key_side(wid, nwg, lid3.x, false);
}

@compute @workgroup_size(64)
fn attention_grad_k(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_id) lid3: vec3<u32>) {
    key_side(wid, nwg, lid3.x, true);
}
