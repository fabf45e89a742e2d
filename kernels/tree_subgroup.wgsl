// tree.wgsl through subgroup shuffles, for devices with the SUBGROUP feature (the executor
// puts this in its place; TRAINER_NO_SUBGROUPS=1 keeps tree.wgsl). Same functions, same
// contract: every thread gets the workgroup's total, in an order fixed by the subgroup size
// and the device's (fixed) grouping of invocations into subgroups, so a device gives the same
// bits run to run. No subgroupAdd: its order is unspecified.
//
// 1. A butterfly of subgroupShuffleXor inside each subgroup (masks 1, 2, 4, ...): every lane
//    ends with its subgroup's total, the same bits in every lane (a + b = b + a).
// 2. Lane 0 writes it to slot `subgroup_id`; one barrier.
// 3. Every subgroup adds the slots the same way (lane k takes slots k, k + width, ... in order,
//    then the butterfly), so all threads agree; a last barrier before the slots are reused.
// Two barriers, where tree.wgsl takes log2(WORKGROUP) + 2.
//
// The host picks this file only for adapters whose subgroup sizes are powers of two of at
// least 4 lanes (`TREE_SLOTS`); a workgroup smaller than a subgroup fills one subgroup's
// first lanes, so the butterfly stays within the first min(size, WORKGROUP) lanes.

struct Lanes {
    @builtin(local_invocation_index) index: u32,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_size) size: u32,
    @builtin(subgroup_id) id: u32,
    @builtin(num_subgroups) count: u32,
}

const TREE_SLOTS: u32 = WORKGROUP / 4u;
var<workgroup> tree_red: array<vec2<f32>, TREE_SLOTS>;

// Lanes of a subgroup that hold a value.
fn tree_width(lanes: Lanes) -> u32 {
    return min(lanes.size, WORKGROUP);
}

fn butterfly_sum(lanes: Lanes, v: vec2<f32>) -> vec2<f32> {
    var s = v;
    for (var mask = 1u; mask < tree_width(lanes); mask = mask * 2u) {
        s = s + subgroupShuffleXor(s, mask);
    }
    return s;
}

fn butterfly_max(lanes: Lanes, v: f32) -> f32 {
    var m = v;
    for (var mask = 1u; mask < tree_width(lanes); mask = mask * 2u) {
        m = max(m, subgroupShuffleXor(m, mask));
    }
    return m;
}

fn tree_sum(lanes: Lanes, v: vec2<f32>) -> vec2<f32> {
    let own = butterfly_sum(lanes, v);
    if (lanes.lane == 0u && lanes.id < TREE_SLOTS) {
        tree_red[lanes.id] = own;
    }
    workgroupBarrier();
    let slots = min(lanes.count, TREE_SLOTS);
    var s = vec2<f32>(0.0, 0.0);
    // The same trip count in every lane: the shuffles after the loop need the whole subgroup.
    for (var k = 0u; k < slots; k = k + tree_width(lanes)) {
        if (k + lanes.lane < slots) {
            s = s + tree_red[k + lanes.lane];
        }
    }
    let total = butterfly_sum(lanes, s);
    // Nobody may overwrite a slot before every subgroup has read them all.
    workgroupBarrier();
    return total;
}

fn tree_max(lanes: Lanes, v: f32) -> f32 {
    let own = butterfly_max(lanes, v);
    if (lanes.lane == 0u && lanes.id < TREE_SLOTS) {
        tree_red[lanes.id].x = own;
    }
    workgroupBarrier();
    // Slot 0 stands in where a lane has no slot of its own: max is idempotent.
    let slots = min(lanes.count, TREE_SLOTS);
    var m = tree_red[0].x;
    for (var k = 0u; k < slots; k = k + tree_width(lanes)) {
        if (k + lanes.lane < slots) {
            m = max(m, tree_red[k + lanes.lane].x);
        }
    }
    let total = butterfly_max(lanes, m);
    workgroupBarrier();
    return total;
}
