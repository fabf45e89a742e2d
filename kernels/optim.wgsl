// Optimizer updates (src/ops/optim.rs): SGD, Adam/AdamW, the gradient-clipping coefficient and
// a counter. Every entry shares one Params struct (fields an entry does not use are 0).
//
// SGD and Adam write their outputs over their inputs (the parameter and its state are the same
// memory): each thread reads every input at its element, then writes its outputs there, and
// touches no other element. The learning rate and step count come from `step` at run time.

struct Params {
    n: u32,
    // FLAG_* below.
    flags: u32,
    max_norm: f32,
    // SGD: momentum and 1 − dampening. Adam: weight of the first moment's lerp (1 − β1), β2,
    // 1 − β2, eps, ln β1 and ln β2 (for the bias corrections). Both: weight decay.
    momentum: f32,
    damp: f32,
    weight_decay: f32,
    w1: f32,
    beta2: f32,
    c2: f32,
    eps: f32,
    ln_beta1: f32,
    ln_beta2: f32,
    // grad_norm: elements per block, and where this dispatch's first block writes its sum.
    chunk: u32,
    base: u32,
    _p0: u32,
    _p1: u32,
    // grad_norm: the element count of each bound gradient (b1..b7).
    sizes: array<vec4<u32>, 2>,
    // Multi-tensor entries (optim_multi.wgsl): multi.wgsl's fields, in place of the marker.
    //MULTI
}

const FLAG_NESTEROV: u32 = 1u;
// Weight decay added to the gradient (SGD, Adam).
const FLAG_DECAY: u32 = 2u;
// Weight decay applied to the parameter (AdamW).
const FLAG_DECOUPLED: u32 = 4u;

@group(0) @binding(0) var<uniform> p: Params;

// b_k is Dispatch::bindings[k]; each entry names what it binds.
@group(0) @binding(2) var<storage, read_write> b0: array<f32>;
@group(0) @binding(3) var<storage, read_write> b1: array<f32>;
@group(0) @binding(4) var<storage, read_write> b2: array<f32>;
@group(0) @binding(5) var<storage, read_write> b3: array<f32>;
@group(0) @binding(6) var<storage, read_write> b4: array<f32>;
@group(0) @binding(7) var<storage, read_write> b5: array<f32>;
@group(0) @binding(8) var<storage, read_write> b6: array<f32>;
@group(0) @binding(9) var<storage, read_write> b7: array<f32>;

fn has(flag: u32) -> bool {
    return (p.flags & flag) != 0u;
}

// ---- SGD: g ← g·coef; g ← g + wd·p; buf ← g at step 1, else momentum·buf + (1 − dampening)·g;
// g ← g + momentum·buf if nesterov else buf; p ← p − lr·g (the CPU's order, in f32).

fn sgd_grad(w: f32, g: f32, coef: f32) -> f32 {
    // Without clipping coef is 1, and g·1 is g exactly.
    let d = g * coef;
    if (has(FLAG_DECAY)) {
        return d + p.weight_decay * w;
    }
    return d;
}

// (p', buf') from p, g, buf.
fn sgd_momentum_update(w: f32, g: f32, buf: f32, coef: f32) -> vec2<f32> {
    let d = sgd_grad(w, g, coef);
    var b = d;
    if (step.step != 1u) {
        b = buf * p.momentum + p.damp * d;
    }
    var u = b;
    if (has(FLAG_NESTEROV)) {
        u = d + p.momentum * b;
    }
    return vec2<f32>(w + -step.lr * u, b);
}

// b0 p, b1 g, b2 p'.
@compute @workgroup_size(256)
fn sgd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid);
    if (i >= p.n) {
        return;
    }
    let w = b0[i];
    b2[i] = w + -step.lr * sgd_grad(w, b1[i], 1.0);
}

// b0 p, b1 g, b2 coef [], b3 p'.
@compute @workgroup_size(256)
fn sgd_clip(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid);
    if (i >= p.n) {
        return;
    }
    let w = b0[i];
    b3[i] = w + -step.lr * sgd_grad(w, b1[i], b2[0]);
}

// b0 p, b1 g, b2 buf, b3 p', b4 buf'.
@compute @workgroup_size(256)
fn sgd_momentum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid);
    if (i >= p.n) {
        return;
    }
    let r = sgd_momentum_update(b0[i], b1[i], b2[i], 1.0);
    b3[i] = r.x;
    b4[i] = r.y;
}

// b0 p, b1 g, b2 buf, b3 coef [], b4 p', b5 buf'.
@compute @workgroup_size(256)
fn sgd_momentum_clip(@builtin(workgroup_id) wid: vec3<u32>,
                     @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid);
    if (i >= p.n) {
        return;
    }
    let r = sgd_momentum_update(b0[i], b1[i], b2[i], b3[0]);
    b4[i] = r.x;
    b5[i] = r.y;
}

// ---- Adam / AdamW.

// 1 − β^t from ln β, without the cancellation of 1 − pow(β, t) in f32 when β^t is near 1:
// −expm1(t·ln β) by its Taylor series there (error below 1e-8 for |x| ≤ 0.5).
fn one_minus_pow(ln_beta: f32, t: f32) -> f32 {
    let x = t * ln_beta;
    if (x < -0.5) {
        return 1.0 - exp(x);
    }
    var s = 1.0;
    for (var k = 8.0; k > 1.5; k = k - 1.0) {
        s = 1.0 + x / k * s;
    }
    return -(x * s);
}

// ATen's lerp(a, b, w).
fn lerp(a: f32, b: f32, w: f32) -> f32 {
    if (abs(w) < 0.5) {
        return a + w * (b - a);
    }
    return b - (b - a) * (1.0 - w);
}

// (p', m', v') from p, g, m, v: g ← g·coef; Adam: g ← g + wd·p | AdamW: p ← p·(1 − lr·wd);
// m ← lerp(m, g, 1 − β1); v ← v·β2 + (1 − β2)·g·g; denom = sqrt(v)/sqrt(1 − β2^t) + eps;
// p ← p + (−lr/(1 − β1^t))·m/denom.
fn adam_update(w0: f32, g0: f32, m0: f32, v0: f32, coef: f32) -> vec3<f32> {
    let t = f32(step.step);
    let neg_step_size = -(step.lr / one_minus_pow(p.ln_beta1, t));
    let bc2_sqrt = sqrt(one_minus_pow(p.ln_beta2, t));
    var g = g0 * coef;
    if (has(FLAG_DECAY)) {
        g = g + p.weight_decay * w0;
    }
    var w = w0;
    if (has(FLAG_DECOUPLED)) {
        w = w0 * (1.0 - step.lr * p.weight_decay);
    }
    let m = lerp(m0, g, p.w1);
    let v = v0 * p.beta2 + p.c2 * g * g;
    let denom = sqrt(v) / bc2_sqrt + p.eps;
    return vec3<f32>(w + neg_step_size * m / denom, m, v);
}

// b0 p, b1 g, b2 m, b3 v, b4 p', b5 m', b6 v'.
@compute @workgroup_size(256)
fn adam(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid);
    if (i >= p.n) {
        return;
    }
    let r = adam_update(b0[i], b1[i], b2[i], b3[i], 1.0);
    b4[i] = r.x;
    b5[i] = r.y;
    b6[i] = r.z;
}

// b0 p, b1 g, b2 m, b3 v, b4 coef [], b5 p', b6 m', b7 v'.
@compute @workgroup_size(256)
fn adam_clip(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid);
    if (i >= p.n) {
        return;
    }
    let r = adam_update(b0[i], b1[i], b2[i], b3[i], b4[0]);
    b5[i] = r.x;
    b6[i] = r.y;
    b7[i] = r.z;
}

// ---- Gradient-norm clipping coefficient, in two passes. First, blocks of `chunk` elements of
// every gradient, a workgroup each, write their sums of g² to workspace: a dispatch binds the
// workspace b0 and up to seven gradients b1..b7 (src/ops/optim.rs generates the sums over the
// bound ones in place of the marker below), its `n` workgroups taking each gradient's blocks
// in order, from b0[base]. Then grad_norm_total adds every block's sum in a fixed order and
// turns the total into min(1, max_norm / (sqrt(total) + 1e-6)). No atomics.

fn size(k: u32) -> u32 {
    return p.sizes[k / 4u][k % 4u];
}

@compute @workgroup_size(256)
fn grad_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_id) lid3: vec3<u32>, lanes: Lanes) {
    let lid = lid3.x;
    // Uniform across the workgroup, so the early return keeps barriers uniform.
    let g = wid.y * nwg.x + wid.x;
    if (g >= p.n) {
        return;
    }
    // Gradient k and its block b that workgroup g takes (every gradient has at least one).
    var k = 0u;
    var b = g;
    for (; k < 6u; k = k + 1u) {
        let blocks = max(1u, (size(k) + p.chunk - 1u) / p.chunk);
        if (b < blocks) {
            break;
        }
        b = b - blocks;
    }
    let start = b * p.chunk;
    let end = min(size(k), start + p.chunk);
    var s = 0.0;
    //SUMS
    let total = tree_sum(lanes, vec2<f32>(s, 0.0)).x;
    if (lid == 0u) {
        b0[p.base + g] = total;
    }
}

// b0 the blocks' sums (n of them), b1 the coefficient [].
@compute @workgroup_size(256)
fn grad_norm_total(@builtin(local_invocation_id) lid3: vec3<u32>, lanes: Lanes) {
    let lid = lid3.x;
    var s = 0.0;
    for (var i = lid; i < p.n; i = i + WORKGROUP) {
        s = s + b0[i];
    }
    let total = tree_sum(lanes, vec2<f32>(s, 0.0)).x;
    if (lid == 0u) {
        let c = p.max_norm / (sqrt(total) + 1e-6);
        // clamp(c, max = 1) keeps a NaN, as torch.clamp does.
        b1[0] = select(c, 1.0, c >= 1.0);
    }
}

// n + 1 on a scalar counter stored as f32 (in place): b0 n, b1 n'.
@compute @workgroup_size(1)
fn count_up() {
    b1[0] = b0[0] + 1.0;
}
