// Batchnorm: statistics, apply, gradient, running statistics (src/ops/norm.rs); layernorm and
// rmsnorm are kernels/layernorm.wgsl.
//
// A sectioned file: each `// @entry NAME` section is compiled with the shared head above the
// first section only (reduce.rs `section`), so each module declares each binding once.
//
// Per-channel sums run in two passes where a channel has many values: blocks of each channel,
// a workgroup each, write partials to the launch's workspace, then a workgroup per channel
// combines them in block order. Inside a workgroup each thread sums a fixed strided range, then
// a fixed tree in workgroup memory. No atomics, so the same inputs give the same bits.
// Statistics take two passes over the data (mean, then squared deviations), like the CPU.
//
// Non-affine variants bind x in place of weight and bias (`affine` 0) so that every entry has a
// fixed number of bindings.

// PyTorch's running statistics: momentum m of the batch's, keep = 1 - m of the old; the
// variance Bessel-corrected. One formula for the single and the multi-tensor kernels.
fn running_stats(old_mean: f32, old_var: f32, mu: f32, s2: f32, m: f32, keep: f32,
                 bessel: f32) -> vec2<f32> {
    return vec2<f32>(m * mu + keep * old_mean, m * (s2 * bessel) + keep * old_var);
}

// @entry bn_stats
// Training batchnorm statistics, first pass. Channel ch of x [N, C, S] holds the count = N*S
// values (i*C + ch)*S + j for i < N, j < S, taken in that order as t = i*S + j and cut into
// `blocks` blocks of `chunk` (norm.rs `bn_split`). Workgroup g takes block g % blocks of
// channel g / blocks and writes its mean and its sum of squared deviations from that mean (two
// passes over the block, which stays in cache) at g: bn_stats_merge combines them. With one
// block per channel (g is then ch) it writes the channel's mean and biased variance itself.
struct Params {
    c: u32,
    n: u32,
    s: u32,
    blocks: u32,
    chunk: u32,
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read_write> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> mean: array<f32>;
@group(0) @binding(4) var<storage, read_write> m2: array<f32>;

@compute @workgroup_size(256)
fn bn_stats(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_id) lid: vec3<u32>, lanes: Lanes) {
    // Uniform across the workgroup, so the early return keeps barriers uniform.
    let g = wid.y * nwg.x + wid.x;
    if (g >= p.c * p.blocks) {
        return;
    }
    let ch = g / p.blocks;
    let start = (g % p.blocks) * p.chunk;
    let end = min(p.n * p.s, start + p.chunk);
    var sum = 0.0;
    for (var t = start + lid.x; t < end; t = t + WORKGROUP) {
        sum = sum + x[((t / p.s) * p.c + ch) * p.s + t % p.s];
    }
    let k = f32(end - start);
    let mu = tree_sum(lanes, vec2<f32>(sum, 0.0)).x / k;
    var sq = 0.0;
    for (var t = start + lid.x; t < end; t = t + WORKGROUP) {
        let d = x[((t / p.s) * p.c + ch) * p.s + t % p.s] - mu;
        sq = sq + d * d;
    }
    let dev = tree_sum(lanes, vec2<f32>(sq, 0.0)).x;
    if (lid.x == 0u) {
        mean[g] = mu;
        m2[g] = select(dev, dev / k, p.blocks == 1u);
    }
}

// @entry bn_stats_merge
// Training batchnorm statistics, second pass: one workgroup per channel combines its blocks'
// means m_b and squared deviations M2_b (counts n_b) in a fixed order: mean = sum n_b m_b / count,
// then var = sum (M2_b + n_b (m_b - mean)^2) / count, exact where the blocks' moments are.
struct Params {
    c: u32,
    n: u32,
    s: u32,
    blocks: u32,
    chunk: u32,
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read_write> block_mean: array<f32>;
@group(0) @binding(3) var<storage, read_write> block_m2: array<f32>;
@group(0) @binding(4) var<storage, read_write> mean: array<f32>;
@group(0) @binding(5) var<storage, read_write> var_: array<f32>;

@compute @workgroup_size(256)
fn bn_stats_merge(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_id) lid: vec3<u32>, lanes: Lanes) {
    let ch = wid.y * nwg.x + wid.x;
    if (ch >= p.c) {
        return;
    }
    let count = p.n * p.s;
    let first = ch * p.blocks;
    var sum = 0.0;
    for (var b = lid.x; b < p.blocks; b = b + WORKGROUP) {
        sum = sum + f32(min(p.chunk, count - b * p.chunk)) * block_mean[first + b];
    }
    let mu = tree_sum(lanes, vec2<f32>(sum, 0.0)).x / f32(count);
    var sq = 0.0;
    for (var b = lid.x; b < p.blocks; b = b + WORKGROUP) {
        let d = block_mean[first + b] - mu;
        sq = sq + (block_m2[first + b] + f32(min(p.chunk, count - b * p.chunk)) * d * d);
    }
    let sigma2 = tree_sum(lanes, vec2<f32>(sq, 0.0)).x / f32(count);
    if (lid.x == 0u) {
        mean[ch] = mu;
        var_[ch] = sigma2;
    }
}

// @entry bn_copy_stats
// Eval-mode batchnorm: the statistics outputs are copies of the running ones.
struct Params {
    c: u32,
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read_write> rm: array<f32>;
@group(0) @binding(3) var<storage, read_write> rv: array<f32>;
@group(0) @binding(4) var<storage, read_write> mean: array<f32>;
@group(0) @binding(5) var<storage, read_write> var_: array<f32>;

@compute @workgroup_size(256)
fn bn_copy_stats(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_id) lid: vec3<u32>) {
    let ch = linear_index(wid, nwg, lid);
    if (ch >= p.c) {
        return;
    }
    mean[ch] = rm[ch];
    var_[ch] = rv[ch];
}

// @entry bn_apply
// y = (x - mean) * w / sqrt(var + eps) + b, one thread per element, from the statistics an
// earlier dispatch wrote (the CPU's f32 sequence); then relu where `relu` is 1 (the fusion
// pass's batchnorm + relu: src/ops/norm.rs puts the elementwise table's relu in place of
// RELU_OF_A).
struct Params {
    total: u32,
    c: u32,
    s: u32,
    affine: u32,
    eps: f32,
    relu: u32,
    // 1: r is added to y before the relu (batchnorm + add + relu at a residual block's end).
    residual: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read_write> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> w: array<f32>;
@group(0) @binding(4) var<storage, read_write> b: array<f32>;
@group(0) @binding(5) var<storage, read_write> mean: array<f32>;
@group(0) @binding(6) var<storage, read_write> var_: array<f32>;
@group(0) @binding(7) var<storage, read_write> y: array<f32>;
@group(0) @binding(8) var<storage, read_write> r: array<f32>;

@compute @workgroup_size(256)
fn bn_apply(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid);
    if (i >= p.total) {
        return;
    }
    let ch = (i / p.s) % p.c;
    var wc = 1.0;
    var bc = 0.0;
    if (p.affine == 1u) {
        wc = w[ch];
        bc = b[ch];
    }
    let scale = wc / sqrt(var_[ch] + p.eps);
    // `stored`: the product rounded before the add, whatever the driver would contract (this
    // kernel has fused variants); the result as the unfused batchnorm and add launches round it.
    var a = stored(stored((x[i] - mean[ch]) * scale) + bc);
    if (p.residual == 1u) {
        a = stored(a + r[i]);
    }
    if (p.relu == 1u) {
        y[i] = RELU_OF_A;
    } else {
        y[i] = a;
    }
}

// @entry bn_grad_sums
// Batchnorm gradient sums, first pass, blocks as in bn_stats: workgroup g writes its block's
// sum dy*(x - mean) to dot[g] and sum dy to sum_dy[g] for bn_grad_merge; with one block per
// channel, dweight = dot/sqrt(var + eps) and dbias = sum dy there directly. dy is read through
// dy_at: the dy input, or (batchnorm_relu_grad, the fusion pass's) relu's gradient of a dy
// input or of the sum of two, made as the launches it replaces made it, which this pass then
// stores (src/ops/norm.rs puts `dy_out[at] = d;` in place of STORE_DY) for bn_grad_dx, whose
// dy_at is then the plain read, as unfused.
struct Params {
    c: u32,
    n: u32,
    s: u32,
    blocks: u32,
    chunk: u32,
    eps: f32,
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read_write> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> mean: array<f32>;
@group(0) @binding(4) var<storage, read_write> var_: array<f32>;
@group(0) @binding(5) var<storage, read_write> dy: array<f32>;
@group(0) @binding(6) var<storage, read_write> dot: array<f32>;
@group(0) @binding(7) var<storage, read_write> sum_dy: array<f32>;
//DY_BINDINGS

// dy at element i (norm.rs `DyFrom` writes the body and any bindings it reads).
fn dy_at(i: u32) -> f32 {
    //DY_AT
}

@compute @workgroup_size(256)
fn bn_grad_sums(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_id) lid: vec3<u32>, lanes: Lanes) {
    let g = wid.y * nwg.x + wid.x;
    if (g >= p.c * p.blocks) {
        return;
    }
    let ch = g / p.blocks;
    let start = (g % p.blocks) * p.chunk;
    let end = min(p.n * p.s, start + p.chunk);
    let mu = mean[ch];
    var acc = vec2<f32>(0.0, 0.0);
    for (var t = start + lid.x; t < end; t = t + WORKGROUP) {
        let at = ((t / p.s) * p.c + ch) * p.s + t % p.s;
        let d = dy_at(at);
        //STORE_DY
        // `stored`: no contraction into the sum, which the driver might choose differently
        // in this kernel's fused variants.
        acc = acc + vec2<f32>(d, stored(d * (x[at] - mu)));
    }
    let total = tree_sum(lanes, acc);
    if (lid.x == 0u) {
        dot[g] = select(total.y, total.y / sqrt(var_[ch] + p.eps), p.blocks == 1u);
        sum_dy[g] = total.x;
    }
}

// @entry bn_grad_merge
// Batchnorm gradient sums, second pass: one workgroup per channel adds its blocks' partials in a
// fixed order: dweight = sum dy*(x - mean) / sqrt(var + eps), dbias = sum dy.
struct Params {
    c: u32,
    n: u32,
    s: u32,
    blocks: u32,
    chunk: u32,
    eps: f32,
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read_write> dot: array<f32>;
@group(0) @binding(3) var<storage, read_write> sum_dy: array<f32>;
@group(0) @binding(4) var<storage, read_write> var_: array<f32>;
@group(0) @binding(5) var<storage, read_write> dw: array<f32>;
@group(0) @binding(6) var<storage, read_write> db: array<f32>;

@compute @workgroup_size(256)
fn bn_grad_merge(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_id) lid: vec3<u32>, lanes: Lanes) {
    let ch = wid.y * nwg.x + wid.x;
    if (ch >= p.c) {
        return;
    }
    let first = ch * p.blocks;
    var acc = vec2<f32>(0.0, 0.0);
    for (var b = lid.x; b < p.blocks; b = b + WORKGROUP) {
        acc = acc + vec2<f32>(dot[first + b], sum_dy[first + b]);
    }
    let total = tree_sum(lanes, acc);
    if (lid.x == 0u) {
        dw[ch] = total.x / sqrt(var_[ch] + p.eps);
        db[ch] = total.y;
    }
}

// @entry bn_grad_dx
// Batchnorm dx, one thread per element, from the sums bn_grad_sums wrote:
// training: dx = w*invstd*(dy - sum(dy)/M - (x - mean)*invstd*sum(dy*xhat)/M); eval: w*invstd*dy.
struct Params {
    total: u32,
    c: u32,
    s: u32,
    affine: u32,
    training: u32,
    count: f32,
    eps: f32,
    _p0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read_write> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> w: array<f32>;
@group(0) @binding(4) var<storage, read_write> mean: array<f32>;
@group(0) @binding(5) var<storage, read_write> var_: array<f32>;
@group(0) @binding(6) var<storage, read_write> dy: array<f32>;
@group(0) @binding(7) var<storage, read_write> dw: array<f32>;
@group(0) @binding(8) var<storage, read_write> db: array<f32>;
@group(0) @binding(9) var<storage, read_write> dx: array<f32>;
//DY_BINDINGS

// dy at element i (norm.rs `DyFrom` writes the body and any bindings it reads).
fn dy_at(i: u32) -> f32 {
    //DY_AT
}

@compute @workgroup_size(256)
fn bn_grad_dx(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid);
    if (i >= p.total) {
        return;
    }
    let ch = (i / p.s) % p.c;
    let istd = 1.0 / sqrt(var_[ch] + p.eps);
    var scale = istd;
    if (p.affine == 1u) {
        scale = w[ch] * istd;
    }
    if (p.training == 0u) {
        dx[i] = dy_at(i) * scale;
        return;
    }
    let mean_dy = db[ch] / p.count;
    let k = dw[ch] * istd / p.count;
    // `stored`: as in bn_grad_sums (NVIDIA's driver contracted this product in one variant
    // of the kernel and not in another).
    dx[i] = (dy_at(i) - mean_dy - stored((x[i] - mean[ch]) * k)) * scale;
}

// @entry bn_running_stats
// rm <- m*mean + (1-m)*rm; rv <- m*var*bessel + (1-m)*rv, per channel. The outputs may be
// written over rm and rv: each thread reads its element of every input before writing.
struct Params {
    c: u32,
    m: f32,
    keep: f32,
    bessel: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read_write> rm: array<f32>;
@group(0) @binding(3) var<storage, read_write> rv: array<f32>;
@group(0) @binding(4) var<storage, read_write> mean: array<f32>;
@group(0) @binding(5) var<storage, read_write> var_: array<f32>;
@group(0) @binding(6) var<storage, read_write> new_rm: array<f32>;
@group(0) @binding(7) var<storage, read_write> new_rv: array<f32>;

@compute @workgroup_size(256)
fn bn_running_stats(@builtin(workgroup_id) wid: vec3<u32>,
                    @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid);
    if (i >= p.c) {
        return;
    }
    let a = rm[i];
    let v = rv[i];
    let mu = mean[i];
    let s2 = var_[i];
    let r = running_stats(a, v, mu, s2, p.m, p.keep, p.bessel);
    new_rm[i] = r.x;
    new_rv[i] = r.y;
}

// @entry bn_running_stats_multi
// bn_running_stats over many batchnorms at once (src/kernel/gpu/multi.rs; multi.wgsl is
// appended): b0 rm, b1 rv, b2 mean, b3 var, b4 rm', b5 rv', each a window over every member.
struct Params {
    m: f32,
    keep: f32,
    bessel: f32,
    _p0: u32,
    //MULTI
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read_write> b0: array<f32>;
@group(0) @binding(3) var<storage, read_write> b1: array<f32>;
@group(0) @binding(4) var<storage, read_write> b2: array<f32>;
@group(0) @binding(5) var<storage, read_write> b3: array<f32>;
@group(0) @binding(6) var<storage, read_write> b4: array<f32>;
@group(0) @binding(7) var<storage, read_write> b5: array<f32>;

@compute @workgroup_size(256)
fn bn_running_stats_multi(@builtin(workgroup_id) wid: vec3<u32>,
                          @builtin(num_workgroups) nwg: vec3<u32>,
                          @builtin(local_invocation_id) lid: vec3<u32>) {
    let s = span(wid, nwg);
    let o0 = cell(s.t, 2u);
    let o1 = cell(s.t, 3u);
    let o2 = cell(s.t, 4u);
    let o3 = cell(s.t, 5u);
    let o4 = cell(s.t, 6u);
    let o5 = cell(s.t, 7u);
    for (var i = s.start + lid.x; i < s.end; i = i + WORKGROUP) {
        let a = b0[o0 + i];
        let v = b1[o1 + i];
        let mu = b2[o2 + i];
        let s2 = b3[o3 + i];
        let r = running_stats(a, v, mu, s2, p.m, p.keep, p.bessel);
        b4[o4 + i] = r.x;
        b5[o5 + i] = r.y;
    }
}
