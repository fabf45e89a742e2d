// Data movement (src/ops/movement.rs): copies, permute, concat, slice, gather and its gradient,
// fill, the causal mask.
// Every entry shares one Params struct (fields an entry does not use are 0); one thread per
// element written.
//
// Concat and slice see a tensor as [outer, run] rows: along the axis, `run` elements of one
// side are a contiguous piece of a `stride`-long row of the other side, at `offset`.

struct Params {
    // Elements written (gather_grad: vocab · width).
    n: u32,
    run: u32,
    stride: u32,
    offset: u32,
    // gather: table rows; gather_grad: output rows.
    vocab: u32,
    // gather, gather_grad: row width D.
    width: u32,
    // gather_grad: the number of ids.
    count: u32,
    // fill: the value.
    value: f32,
    // A quiet NaN (uniform, so no compiler folds it away): what an invalid id gives.
    nan: f32,
    // permute: the output's dims d0..d5 (outermost first) and the input stride each steps,
    // padded at the front with dims of 1 and strides of 0.
    d0: u32,
    d1: u32,
    d2: u32,
    d3: u32,
    d4: u32,
    d5: u32,
    s0: u32,
    s1: u32,
    s2: u32,
    s3: u32,
    s4: u32,
    s5: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// b_k is Dispatch::bindings[k]; each entry names what it binds.
@group(0) @binding(2) var<storage, read_write> b0: array<f32>;
@group(0) @binding(3) var<storage, read_write> b1: array<f32>;
@group(0) @binding(4) var<storage, read_write> b2: array<f32>;

// b0 x, b1 y: y = x (reshape of a contiguous tensor).
@compute @workgroup_size(256)
fn copy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid);
    if (i >= p.n) {
        return;
    }
    b1[i] = b0[i];
}

// b0 x, b1 y = x with its axes permuted: y's element i, unravelled over the output dims, steps
// each dim's input stride.
@compute @workgroup_size(256)
fn permute(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid);
    if (i >= p.n) {
        return;
    }
    var r = i;
    var at = (r % p.d5) * p.s5;
    r = r / p.d5;
    at = at + (r % p.d4) * p.s4;
    r = r / p.d4;
    at = at + (r % p.d3) * p.s3;
    r = r / p.d3;
    at = at + (r % p.d2) * p.s2;
    r = r / p.d2;
    at = at + (r % p.d1) * p.s1;
    r = r / p.d1;
    at = at + (r % p.d0) * p.s0;
    b1[i] = b0[at];
}

// One input of a concat: b0 x [outer, run], b1 y [outer, stride]; x's row o goes to y's row o
// at `offset`. One dispatch per input.
@compute @workgroup_size(256)
fn concat_part(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid);
    if (i >= p.n) {
        return;
    }
    let o = i / p.run;
    b1[o * p.stride + p.offset + i % p.run] = b0[i];
}

// b0 x [outer, stride], b1 y [outer, run]: y's row o is x's row o from `offset`.
@compute @workgroup_size(256)
fn slice(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid);
    if (i >= p.n) {
        return;
    }
    let o = i / p.run;
    b1[i] = b0[o * p.stride + p.offset + i % p.run];
}

// b0 scores [.., T, S] (stride = T, run = S), b1 y: key j past query i (j > i) gets `value`.
@compute @workgroup_size(256)
fn causal_fill(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid);
    if (i >= p.n) {
        return;
    }
    let j = i % p.run;
    let row = (i / p.run) % p.stride;
    b1[i] = select(b0[i], p.value, j > row);
}

// The table row an id (an integer stored as f32) picks, or vocab when it is outside [0, vocab)
// (NaN included), as the CPU's `row`: the fraction is truncated.
fn row_of(id: f32) -> u32 {
    if (id >= 0.0 && id < f32(p.vocab) && u32(id) < p.vocab) {
        return u32(id);
    }
    return p.vocab;
}

// b0 table [vocab, width], b1 ids [count], b2 y [count, width]; a bad id gives a row of NaN.
@compute @workgroup_size(256)
fn gather(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid);
    if (i >= p.n) {
        return;
    }
    let r = row_of(b1[i / p.width]);
    var v = p.nan;
    if (r < p.vocab) {
        v = b0[r * p.width + i % p.width];
    }
    b2[i] = v;
}

var<workgroup> tile: array<f32, 256>;

// b0 ids [count], b1 dy [count, width], b2 dtable [vocab, width]: each output element sums, in
// id order, the dy entries whose id picks its row (the CPU's order: no atomics, the same bits
// every run). The workgroup loads the ids 256 at a time into `tile` and every thread scans it.
@compute @workgroup_size(256)
fn gather_grad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    let i = linear_index(wid, nwg, lid3);
    let live = i < p.n;
    let width = max(p.width, 1u);
    let r = i / width;
    let j = i % width;
    var acc = 0.0;
    for (var t0 = 0u; t0 < p.count; t0 = t0 + WORKGROUP) {
        var id = -1.0;
        if (t0 + lid < p.count) {
            id = b0[t0 + lid];
        }
        tile[lid] = id;
        workgroupBarrier();
        let m = min(WORKGROUP, p.count - t0);
        if (live) {
            for (var q = 0u; q < m; q = q + 1u) {
                if (row_of(tile[q]) == r) {
                    acc = acc + b1[(t0 + q) * width + j];
                }
            }
        }
        workgroupBarrier();
    }
    if (live) {
        b2[i] = acc;
    }
}

// b0 y = value.
@compute @workgroup_size(256)
fn fill(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid);
    if (i >= p.n) {
        return;
    }
    b0[i] = p.value;
}
