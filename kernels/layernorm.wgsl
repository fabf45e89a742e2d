// Layer normalisation over the last dims, forward and gradient (src/ops/norm.rs `LayerNorm`,
// `LayerNormGrad`), and its uncentred variant rmsnorm: `CENTERED` false (norm.rs sets it), no
// mean subtracted (taken as 0) and no bias.
//
// A sectioned file: each `// @entry NAME` section is compiled with the shared head above the
// first section only (`section` in src/kernel/gpu/mod.rs).
//
// A row (m elements) takes a workgroup: each thread sums a fixed strided range, then a fixed
// tree in workgroup memory (tree_sum). The gradient's column sums (dweight, and dbias when
// centred) take a thread per column over blocks of rows, whose partials a second pass adds in
// block order where there are several. No atomics, so the same inputs give the same bits.
//
// Non-affine variants bind x in place of weight and bias (`affine` 0), uncentred ones x in
// place of the bias and dweight's place for dbias's (never read or written), so that every
// entry has a fixed number of bindings; the merge binds x for the head's sake (never read).

const CENTERED: bool = true;

struct Params {
    rows: u32,
    m: u32,
    affine: u32,
    eps: f32,
    // The column sums' blocks of `chunk` rows (ln_grad_cols, ln_grad_cols_merge; else 0).
    blocks: u32,
    chunk: u32,
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read_write> x: array<f32>;

// The mean (0 where not CENTERED) and rstd = 1/sqrt(mean((x - mean)^2) + eps) of the row at
// `base`: two passes over the row, like the CPU. Call from uniform control flow.
fn row_stats(lanes: Lanes, lid: u32, base: u32) -> vec2<f32> {
    var mu = 0.0;
    if (CENTERED) {
        var sum = 0.0;
        for (var j = lid; j < p.m; j = j + WORKGROUP) {
            sum = sum + x[base + j];
        }
        mu = tree_sum(lanes, vec2<f32>(sum, 0.0)).x / f32(p.m);
    }
    var sq = 0.0;
    for (var j = lid; j < p.m; j = j + WORKGROUP) {
        let d = x[base + j] - mu;
        sq = sq + d * d;
    }
    let rstd = 1.0 / sqrt(tree_sum(lanes, vec2<f32>(sq, 0.0)).x / f32(p.m) + p.eps);
    return vec2<f32>(mu, rstd);
}

// @entry ln_forward
// y = (x - mean)*rstd (*w + b when affine; *w uncentred), one workgroup per row.
@group(0) @binding(3) var<storage, read_write> w: array<f32>;
@group(0) @binding(4) var<storage, read_write> b: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn ln_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_id) lid: vec3<u32>, lanes: Lanes) {
    let r = wid.y * nwg.x + wid.x;
    if (r >= p.rows) {
        return;
    }
    let base = r * p.m;
    let s = row_stats(lanes, lid.x, base);
    for (var j = lid.x; j < p.m; j = j + WORKGROUP) {
        let xhat = (x[base + j] - s.x) * s.y;
        if (p.affine == 1u) {
            if (CENTERED) {
                y[base + j] = xhat * w[j] + b[j];
            } else {
                y[base + j] = xhat * w[j];
            }
        } else {
            y[base + j] = xhat;
        }
    }
}

// @entry ln_row_stats
// Gradient, first pass (affine only): each row's statistics, parked in dx as scratch for
// ln_grad_cols, which ln_grad_dx overwrites last: centred, mean and rstd at dx[2r], dx[2r+1]
// (dx has rows*m >= 2*rows elements when m >= 2; with m == 1 xhat is 0 and nothing is
// parked); uncentred, rstd at dx[r].
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;

@compute @workgroup_size(256)
fn ln_row_stats(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_id) lid: vec3<u32>, lanes: Lanes) {
    let r = wid.y * nwg.x + wid.x;
    if (r >= p.rows || (CENTERED && p.m < 2u)) {
        return;
    }
    let s = row_stats(lanes, lid.x, r * p.m);
    if (lid.x == 0u) {
        if (CENTERED) {
            dx[2u * r] = s.x;
            dx[2u * r + 1u] = s.y;
        } else {
            dx[r] = s.y;
        }
    }
}

// @entry ln_grad_cols
// dweight = sum_rows dy*xhat and dbias = sum_rows dy, first pass: a thread per column j
// (neighbours read neighbouring memory) adds the rows of one block in order; workgroup g takes
// columns of tile g % tiles and rows [b*chunk, (b+1)*chunk) of block b = g / tiles, and writes
// its sums at j*blocks + b: partials for ln_grad_cols_merge, or with one block dweight and
// dbias themselves. Row statistics come from ln_row_stats' scratch (centred with m == 1, xhat
// is 0: x equals its row mean).
@group(0) @binding(3) var<storage, read_write> dy: array<f32>;
@group(0) @binding(4) var<storage, read_write> dx: array<f32>;
@group(0) @binding(5) var<storage, read_write> dw: array<f32>;
@group(0) @binding(6) var<storage, read_write> db: array<f32>;

@compute @workgroup_size(256)
fn ln_grad_cols(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_id) lid: vec3<u32>) {
    let tiles = (p.m + WORKGROUP - 1u) / WORKGROUP;
    let g = wid.y * nwg.x + wid.x;
    let b = g / tiles;
    let j = (g % tiles) * WORKGROUP + lid.x;
    // No barriers below: threads past the last column or block may leave.
    if (b >= p.blocks || j >= p.m) {
        return;
    }
    let end = min(p.rows, (b + 1u) * p.chunk);
    var acc = vec2<f32>(0.0, 0.0);
    for (var r = b * p.chunk; r < end; r = r + 1u) {
        let at = r * p.m + j;
        var xhat = 0.0;
        if (!CENTERED) {
            xhat = x[at] * dx[r];
        } else if (p.m >= 2u) {
            xhat = (x[at] - dx[2u * r]) * dx[2u * r + 1u];
        }
        acc = acc + vec2<f32>(dy[at] * xhat, dy[at]);
    }
    dw[j * p.blocks + b] = acc.x;
    if (CENTERED) {
        db[j * p.blocks + b] = acc.y;
    }
}

// @entry ln_grad_cols_merge
// dweight and dbias, second pass: one workgroup per column adds its blocks' partials in a
// fixed order.
@group(0) @binding(3) var<storage, read_write> part_dw: array<f32>;
@group(0) @binding(4) var<storage, read_write> part_db: array<f32>;
@group(0) @binding(5) var<storage, read_write> dw: array<f32>;
@group(0) @binding(6) var<storage, read_write> db: array<f32>;

@compute @workgroup_size(256)
fn ln_grad_cols_merge(@builtin(workgroup_id) wid: vec3<u32>,
                      @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_id) lid: vec3<u32>, lanes: Lanes) {
    let j = wid.y * nwg.x + wid.x;
    if (j >= p.m) {
        return;
    }
    let first = j * p.blocks;
    var acc = vec2<f32>(0.0, 0.0);
    for (var b = lid.x; b < p.blocks; b = b + WORKGROUP) {
        acc = acc + vec2<f32>(part_dw[first + b], part_db[first + b]);
    }
    let total = tree_sum(lanes, acc);
    if (lid.x == 0u) {
        dw[j] = total.x;
        if (CENTERED) {
            db[j] = total.y;
        }
    }
}

// @entry ln_grad_dx
// dx, one workgroup per row (statistics recomputed): dx = rstd*(g - mean(g) - xhat*mean(g*xhat)),
// g = dy*w; uncentred without the mean(g) term.
@group(0) @binding(3) var<storage, read_write> w: array<f32>;
@group(0) @binding(4) var<storage, read_write> dy: array<f32>;
@group(0) @binding(5) var<storage, read_write> dx: array<f32>;

fn g_of(at: u32, j: u32) -> f32 {
    if (p.affine == 1u) {
        return dy[at] * w[j];
    }
    return dy[at];
}

@compute @workgroup_size(256)
fn ln_grad_dx(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_id) lid: vec3<u32>, lanes: Lanes) {
    let r = wid.y * nwg.x + wid.x;
    if (r >= p.rows) {
        return;
    }
    let base = r * p.m;
    let s = row_stats(lanes, lid.x, base);
    let mu = s.x;
    let rstd = s.y;
    var acc = vec2<f32>(0.0, 0.0);
    for (var j = lid.x; j < p.m; j = j + WORKGROUP) {
        let g = g_of(base + j, j);
        acc = acc + vec2<f32>(g, g * (x[base + j] - mu) * rstd);
    }
    let means = tree_sum(lanes, acc) / f32(p.m);
    var mean_g = 0.0;
    if (CENTERED) {
        mean_g = means.x;
    }
    for (var j = lid.x; j < p.m; j = j + WORKGROUP) {
        let xhat = (x[base + j] - mu) * rstd;
        dx[base + j] = rstd * (g_of(base + j, j) - mean_g - xhat * means.y);
    }
}
