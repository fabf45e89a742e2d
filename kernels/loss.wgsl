// Losses and their gradients (src/ops/loss.rs): cross-entropy with label smoothing, mean
// squared error. Every entry shares one Params struct (fields an entry does not use are 0).
//
// Cross-entropy rows are reduced by segments: a workgroup splits into runs of `lanes`
// consecutive threads (a power of two, at most 256); each run owns one row at a time, its lanes
// stride over the row's columns, and a tree inside the run combines them. Small class counts
// then keep most threads busy, large ones use the whole workgroup per row.
//
// The losses' means take two passes where there is much to add: blocks of rows (cross-entropy)
// or elements (mse), a workgroup each, write their sums to the launch's workspace, then one
// workgroup adds them in block order (loss_total). With one block, the first pass writes the
// mean itself. No atomics: the same inputs give the same bits.

struct Params {
    rows: u32,
    cols: u32,
    // Threads per row (a power of two dividing WORKGROUP).
    lanes: u32,
    // Elements (mse, mse_grad); rows for cross-entropy's loss_total: what the mean divides by.
    n: u32,
    // Blocks of the first pass (cross_entropy, mse), and rows or elements per block.
    blocks: u32,
    chunk: u32,
    // Label smoothing ε, 1 − ε and ε / C, rounded from f64 on the host.
    eps: f32,
    keep: f32,
    eps_c: f32,
    // mse_grad: 2 / numel.
    scale: f32,
    // A quiet NaN (uniform, so no compiler folds it away): what an invalid label gives.
    nan: f32,
    // Cross-entropy: whether rows labelled `ignore` are left out of the loss and its mean.
    has_ignore: u32,
    ignore: f32,
}

@group(0) @binding(0) var<uniform> p: Params;

// b_k is Dispatch::bindings[k]; each entry names what it binds.
@group(0) @binding(2) var<storage, read_write> b0: array<f32>;
@group(0) @binding(3) var<storage, read_write> b1: array<f32>;
@group(0) @binding(4) var<storage, read_write> b2: array<f32>;
@group(0) @binding(5) var<storage, read_write> b3: array<f32>;
@group(0) @binding(6) var<storage, read_write> b4: array<f32>;

var<workgroup> red_a: array<f32, 256>;
var<workgroup> red_b: array<f32, 256>;

// The max of v over this thread's run of `lanes` threads, given to every thread of the run.
// All threads must call it (it has barriers).
fn segment_max(lid: u32, v: f32) -> f32 {
    let lane = lid % p.lanes;
    red_a[lid] = v;
    workgroupBarrier();
    for (var s = p.lanes / 2u; s > 0u; s = s / 2u) {
        if (lane < s) {
            red_a[lid] = max(red_a[lid], red_a[lid + s]);
        }
        workgroupBarrier();
    }
    let r = red_a[lid - lane];
    workgroupBarrier();
    return r;
}

// The sums of v.x and v.y over this thread's run (fixed tree: deterministic).
fn segment_sum2(lid: u32, v: vec2<f32>) -> vec2<f32> {
    let lane = lid % p.lanes;
    red_a[lid] = v.x;
    red_b[lid] = v.y;
    workgroupBarrier();
    for (var s = p.lanes / 2u; s > 0u; s = s / 2u) {
        if (lane < s) {
            red_a[lid] = red_a[lid] + red_a[lid + s];
            red_b[lid] = red_b[lid] + red_b[lid + s];
        }
        workgroupBarrier();
    }
    let r = vec2<f32>(red_a[lid - lane], red_b[lid - lane]);
    workgroupBarrier();
    return r;
}

// Whether a label (an integer stored as f32) names a class in [0, cols), as the CPU's `class`.
fn valid_label(y: f32) -> bool {
    return y >= 0.0 && y < f32(p.cols) && fract(y) == 0.0 && u32(y) < p.cols;
}

// Whether a row's label asks to be left out (`ignore_index`).
fn ignored(y: f32) -> bool {
    return p.has_ignore != 0u && y == p.ignore;
}

// Max, then Σ exp(x − max) and Σ x of row `row` (row < rows where `live`), per run.
struct RowStats {
    m: f32,
    sum_exp: f32,
    sum_x: f32,
}

fn row_stats(lid: u32, row: u32, live: bool) -> RowStats {
    let lane = lid % p.lanes;
    let base = row * p.cols;
    var m = -3.4028235e38;
    if (live) {
        for (var j = lane; j < p.cols; j = j + p.lanes) {
            m = max(m, b0[base + j]);
        }
    }
    m = segment_max(lid, m);
    var acc = vec2<f32>(0.0, 0.0);
    if (live) {
        for (var j = lane; j < p.cols; j = j + p.lanes) {
            let v = b0[base + j];
            acc = acc + vec2<f32>(exp(v - m), v);
        }
    }
    acc = segment_sum2(lid, acc);
    return RowStats(m, acc.x, acc.y);
}

// Cross-entropy, first pass: b0 logits [rows, cols], b1 labels [rows], b2 the blocks' sums and
// counted rows as pairs (or the loss [] with one block). Workgroup g takes rows
// [g*chunk, (g+1)*chunk), chunk a multiple of the rows a round takes; each run's first lane
// accumulates its rows' losses and count in row order, then `tree_sum` adds the runs.
@compute @workgroup_size(256)
fn cross_entropy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_id) lid3: vec3<u32>, lanes: Lanes) {
    // Uniform across the workgroup, so the early return keeps barriers uniform.
    let g = wid.y * nwg.x + wid.x;
    if (g >= p.blocks) {
        return;
    }
    let lid = lid3.x;
    let lane = lid % p.lanes;
    let per = WORKGROUP / p.lanes;
    let end = min(p.rows, (g + 1u) * p.chunk);
    var total = vec2<f32>(0.0, 0.0);
    for (var r0 = g * p.chunk; r0 < end; r0 = r0 + per) {
        let row = r0 + lid / p.lanes;
        let live = row < end;
        let st = row_stats(lid, row, live);
        if (live && lane == 0u) {
            let y = b1[row];
            if (ignored(y)) {
                // Left out: neither its loss nor its count.
            } else if (valid_label(y)) {
                let lse = st.m + log(st.sum_exp);
                let nll = lse - b0[row * p.cols + u32(y)];
                let smoothed = lse - st.sum_x / f32(p.cols);
                total = total + vec2<f32>(p.keep * nll + p.eps * smoothed, 1.0);
            } else {
                total = vec2<f32>(p.nan, total.y + 1.0);
            }
        }
    }
    let sum = tree_sum(lanes, total);
    if (lid == 0u) {
        if (p.blocks == 1u) {
            b2[0] = sum.x / sum.y;
        } else {
            b2[2u * g] = sum.x;
            b2[2u * g + 1u] = sum.y;
        }
    }
}

// Second pass of mse: b0 the blocks' sums, b1 loss []: their total, each thread adding a fixed
// strided set in block order, then `tree_sum`; divided by n.
@compute @workgroup_size(256)
fn loss_total(@builtin(local_invocation_id) lid3: vec3<u32>, lanes: Lanes) {
    let lid = lid3.x;
    var s = 0.0;
    for (var i = lid; i < p.blocks; i = i + WORKGROUP) {
        s = s + b0[i];
    }
    let sum = tree_sum(lanes, vec2<f32>(s, 0.0)).x;
    if (lid == 0u) {
        b1[0] = sum / f32(p.n);
    }
}

// Second pass of cross_entropy: b0 the blocks' (sum, count) pairs, b1 loss []: the sum over the
// count, both added as loss_total adds.
@compute @workgroup_size(256)
fn cross_entropy_total(@builtin(local_invocation_id) lid3: vec3<u32>, lanes: Lanes) {
    let lid = lid3.x;
    var s = vec2<f32>(0.0, 0.0);
    for (var i = lid; i < p.blocks; i = i + WORKGROUP) {
        s = s + vec2<f32>(b0[2u * i], b0[2u * i + 1u]);
    }
    let sum = tree_sum(lanes, s);
    if (lid == 0u) {
        b1[0] = sum.x / sum.y;
    }
}

// The rows cross-entropy counts: b0 labels [rows], b1 the count [1] (exact in f32 below 2^24
// rows; one workgroup, fixed order).
@compute @workgroup_size(256)
fn counted_rows(@builtin(local_invocation_id) lid3: vec3<u32>, lanes: Lanes) {
    let lid = lid3.x;
    var s = 0.0;
    for (var i = lid; i < p.rows; i = i + WORKGROUP) {
        s = s + select(1.0, 0.0, ignored(b0[i]));
    }
    let sum = tree_sum(lanes, vec2<f32>(s, 0.0)).x;
    if (lid == 0u) {
        b1[0] = sum;
    }
}

// dlogits = dloss / count · (softmax − target): b0 logits, b1 labels, b2 dloss [], b3 dlogits,
// b4 the counted rows (counted_rows, run only with an ignore_index); an ignored row's gradient
// is 0. Each workgroup takes WORKGROUP / lanes rows, one per run.
@compute @workgroup_size(256)
fn cross_entropy_grad(@builtin(workgroup_id) wid: vec3<u32>,
                      @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    let lane = lid % p.lanes;
    let group = wid.y * nwg.x + wid.x;
    let row = group * (WORKGROUP / p.lanes) + lid / p.lanes;
    let live = row < p.rows;
    let st = row_stats(lid, row, live);
    if (!live) {
        return;
    }
    let base = row * p.cols;
    let y = b1[row];
    let ok = valid_label(y);
    let skip = ignored(y);
    // The counted rows (b4, from counted_rows) only where a label is ignored; else all rows.
    var count = f32(p.rows);
    if (p.has_ignore != 0u) {
        count = b4[0];
    }
    let scale = b2[0] / count;
    let lse = st.m + log(st.sum_exp);
    for (var j = lane; j < p.cols; j = j + p.lanes) {
        var d = select(p.nan, 0.0, skip);
        if (ok && !skip) {
            let want = p.eps_c + select(0.0, p.keep, j == u32(y));
            d = scale * (exp(b0[base + j] - lse) - want);
        }
        b3[base + j] = d;
    }
}

// Mse, first pass: b0 pred, b1 target, b2 the blocks' sums of (pred − target)² (or the loss []
// with one block). Workgroup g takes elements [g*chunk, (g+1)*chunk).
@compute @workgroup_size(256)
fn mse(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_id) lid3: vec3<u32>, lanes: Lanes) {
    let g = wid.y * nwg.x + wid.x;
    if (g >= p.blocks) {
        return;
    }
    let lid = lid3.x;
    let end = min(p.n, (g + 1u) * p.chunk);
    var s = 0.0;
    for (var i = g * p.chunk + lid; i < end; i = i + WORKGROUP) {
        let d = b0[i] - b1[i];
        s = s + d * d;
    }
    let sum = tree_sum(lanes, vec2<f32>(s, 0.0)).x;
    if (lid == 0u) {
        b2[g] = select(sum, sum / f32(p.n), p.blocks == 1u);
    }
}

// dpred = scale · (pred − target) · dloss: b0 pred, b1 target, b2 dloss [], b3 dpred. dpred may
// be pred's memory: each thread reads its element before writing it.
@compute @workgroup_size(256)
fn mse_grad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid);
    if (i >= p.n) {
        return;
    }
    b3[i] = p.scale * (b0[i] - b1[i]) * b2[0];
}
