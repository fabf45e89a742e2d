// Reductions: sum and mean over axes (SumTo, MeanAxes), the mean's gradient, softmax and its
// gradient (src/ops/reduce.rs).
//
// A sectioned file: each `// @entry NAME` section is compiled with the shared head above the
// first section only (reduce.rs `section`), so each module declares each binding once.
//
// Deterministic: every sum has a fixed order. A workgroup reduction has each thread sum a fixed
// strided range, then halves a tree in workgroup memory; no atomics. Few outputs of many
// elements each are cut into blocks whose sums a second pass adds in block order, so that
// they fill the GPU.

// Row-major index k over up to 8 dims of (size, stride): the element offset (reduce.rs `offset`).
fn offset_of(k0: u32, n: u32, size: array<vec4<u32>, 2>, stride: array<vec4<u32>, 2>) -> u32 {
    var k = k0;
    var off = 0u;
    for (var d = n; d > 0u; d = d - 1u) {
        let s = size[(d - 1u) / 4u][(d - 1u) % 4u];
        off = off + (k % s) * stride[(d - 1u) / 4u][(d - 1u) % 4u];
        k = k / s;
    }
    return off;
}

// @entry axes_thread
// Sum (or mean) over axes, one thread per output: for many outputs of few elements each.
struct Params {
    outputs: u32,
    count: u32,
    nkept: u32,
    nred: u32,
    // 1: divide by count (MeanAxes); 0: plain sum (SumTo).
    mean: u32,
    _p0: u32,
    _p1: u32,
    _p2: u32,
    kept_size: array<vec4<u32>, 2>,
    kept_stride: array<vec4<u32>, 2>,
    red_size: array<vec4<u32>, 2>,
    red_stride: array<vec4<u32>, 2>,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read_write> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn axes_thread(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_id) lid: vec3<u32>) {
    let o = linear_index(wid, nwg, lid);
    if (o >= p.outputs) {
        return;
    }
    let base = offset_of(o, p.nkept, p.kept_size, p.kept_stride);
    var sum = 0.0;
    for (var r = 0u; r < p.count; r = r + 1u) {
        sum = sum + x[base + offset_of(r, p.nred, p.red_size, p.red_stride)];
    }
    if (p.mean == 1u) {
        sum = sum / f32(p.count);
    }
    y[o] = sum;
}

// @entry axes_group
// Sum (or mean) over axes for outputs of many elements each, first pass: each output's `count`
// elements (row-major over the reduced dims) are cut into `blocks` blocks of `chunk`, and
// workgroup g sums block g % blocks of output g / blocks into part[g] for axes_merge; with one
// block per output (g is then the output) it writes the output itself.
struct Params {
    outputs: u32,
    count: u32,
    nkept: u32,
    nred: u32,
    mean: u32,
    blocks: u32,
    chunk: u32,
    _p0: u32,
    kept_size: array<vec4<u32>, 2>,
    kept_stride: array<vec4<u32>, 2>,
    red_size: array<vec4<u32>, 2>,
    red_stride: array<vec4<u32>, 2>,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read_write> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> part: array<f32>;

@compute @workgroup_size(256)
fn axes_group(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_id) lid: vec3<u32>, lanes: Lanes) {
    // Uniform across the workgroup, so the early return keeps barriers uniform.
    let g = wid.y * nwg.x + wid.x;
    if (g >= p.outputs * p.blocks) {
        return;
    }
    let base = offset_of(g / p.blocks, p.nkept, p.kept_size, p.kept_stride);
    let start = (g % p.blocks) * p.chunk;
    let end = min(p.count, start + p.chunk);
    var sum = 0.0;
    for (var r = start + lid.x; r < end; r = r + WORKGROUP) {
        sum = sum + x[base + offset_of(r, p.nred, p.red_size, p.red_stride)];
    }
    var total = tree_sum(lanes, vec2<f32>(sum, 0.0)).x;
    if (p.mean == 1u && p.blocks == 1u) {
        total = total / f32(p.count);
    }
    if (lid.x == 0u) {
        part[g] = total;
    }
}

// @entry axes_merge
// Sum (or mean) over axes, second pass: one workgroup per output adds its blocks' sums in a
// fixed order.
struct Params {
    outputs: u32,
    count: u32,
    nkept: u32,
    nred: u32,
    mean: u32,
    blocks: u32,
    chunk: u32,
    _p0: u32,
    kept_size: array<vec4<u32>, 2>,
    kept_stride: array<vec4<u32>, 2>,
    red_size: array<vec4<u32>, 2>,
    red_stride: array<vec4<u32>, 2>,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read_write> part: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn axes_merge(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_id) lid: vec3<u32>, lanes: Lanes) {
    let o = wid.y * nwg.x + wid.x;
    if (o >= p.outputs) {
        return;
    }
    var sum = 0.0;
    for (var b = lid.x; b < p.blocks; b = b + WORKGROUP) {
        sum = sum + part[o * p.blocks + b];
    }
    var total = tree_sum(lanes, vec2<f32>(sum, 0.0)).x;
    if (p.mean == 1u) {
        total = total / f32(p.count);
    }
    if (lid.x == 0u) {
        y[o] = total;
    }
}

// @entry mean_grad
// dx = dy broadcast over the reduced axes, times 1/count: one thread per element of dx.
struct Params {
    n: u32,
    rank: u32,
    scale: f32,
    _p0: u32,
    size: array<vec4<u32>, 2>,
    // dy's stride along each (merged) dim of dx, 0 along the reduced ones.
    stride: array<vec4<u32>, 2>,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read_write> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;

@compute @workgroup_size(256)
fn mean_grad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid);
    if (i >= p.n) {
        return;
    }
    dx[i] = dy[offset_of(i, p.rank, p.size, p.stride)] * p.scale;
}

// @entry softmax_thread
// Softmax along an axis, one thread per row (short rows): the CPU's exact sequence.
// Row r = (outer o, inner i) holds elements o*len*inner + i + k*inner, k < len.
struct Params {
    rows: u32,
    len: u32,
    inner: u32,
    _p0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read_write> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn softmax_thread(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_id) lid: vec3<u32>) {
    let r = linear_index(wid, nwg, lid);
    if (r >= p.rows || p.len == 0u) {
        return;
    }
    let base = (r / p.inner) * p.len * p.inner + r % p.inner;
    var m = x[base];
    for (var k = 1u; k < p.len; k = k + 1u) {
        m = max(m, x[base + k * p.inner]);
    }
    var sum = 0.0;
    for (var k = 0u; k < p.len; k = k + 1u) {
        let e = exp(x[base + k * p.inner] - m);
        y[base + k * p.inner] = e;
        sum = sum + e;
    }
    for (var k = 0u; k < p.len; k = k + 1u) {
        y[base + k * p.inner] = y[base + k * p.inner] / sum;
    }
}

// @entry softmax_group
// Softmax along an axis, one workgroup per row (long rows): tree max, tree sum, then scale.
struct Params {
    rows: u32,
    len: u32,
    inner: u32,
    _p0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read_write> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn softmax_group(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_id) lid: vec3<u32>, lanes: Lanes) {
    let r = wid.y * nwg.x + wid.x;
    if (r >= p.rows || p.len == 0u) {
        return;
    }
    let base = (r / p.inner) * p.len * p.inner + r % p.inner;
    // Start from element 0 (every row has it): no -inf literal needed.
    var m = x[base];
    for (var k = lid.x; k < p.len; k = k + WORKGROUP) {
        m = max(m, x[base + k * p.inner]);
    }
    m = tree_max(lanes, m);
    var sum = 0.0;
    for (var k = lid.x; k < p.len; k = k + WORKGROUP) {
        sum = sum + exp(x[base + k * p.inner] - m);
    }
    sum = tree_sum(lanes, vec2<f32>(sum, 0.0)).x;
    for (var k = lid.x; k < p.len; k = k + WORKGROUP) {
        y[base + k * p.inner] = exp(x[base + k * p.inner] - m) / sum;
    }
}

// @entry softmax_grad_thread
// dx = y * (dy - sum_axis(dy * y)), one thread per row.
struct Params {
    rows: u32,
    len: u32,
    inner: u32,
    _p0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<storage, read_write> dy: array<f32>;
@group(0) @binding(4) var<storage, read_write> dx: array<f32>;

@compute @workgroup_size(256)
fn softmax_grad_thread(@builtin(workgroup_id) wid: vec3<u32>,
                       @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_id) lid: vec3<u32>) {
    let r = linear_index(wid, nwg, lid);
    if (r >= p.rows) {
        return;
    }
    let base = (r / p.inner) * p.len * p.inner + r % p.inner;
    var dot = 0.0;
    for (var k = 0u; k < p.len; k = k + 1u) {
        dot = dot + dy[base + k * p.inner] * y[base + k * p.inner];
    }
    for (var k = 0u; k < p.len; k = k + 1u) {
        let at = base + k * p.inner;
        dx[at] = y[at] * (dy[at] - dot);
    }
}

// @entry softmax_grad_group
// dx = y * (dy - sum_axis(dy * y)), one workgroup per row.
struct Params {
    rows: u32,
    len: u32,
    inner: u32,
    _p0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<storage, read_write> dy: array<f32>;
@group(0) @binding(4) var<storage, read_write> dx: array<f32>;

@compute @workgroup_size(256)
fn softmax_grad_group(@builtin(workgroup_id) wid: vec3<u32>,
                      @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_id) lid: vec3<u32>, lanes: Lanes) {
    let r = wid.y * nwg.x + wid.x;
    if (r >= p.rows) {
        return;
    }
    let base = (r / p.inner) * p.len * p.inner + r % p.inner;
    var dot = 0.0;
    for (var k = lid.x; k < p.len; k = k + WORKGROUP) {
        dot = dot + dy[base + k * p.inner] * y[base + k * p.inner];
    }
    dot = tree_sum(lanes, vec2<f32>(dot, 0.0)).x;
    for (var k = lid.x; k < p.len; k = k + WORKGROUP) {
        let at = base + k * p.inner;
        dx[at] = y[at] * (dy[at] - dot);
    }
}
