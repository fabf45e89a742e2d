// Multi-tensor forms of the updates in optim.wgsl (after which this text and multi.wgsl are
// appended, with the table in optim's Params): one dispatch updates many tensors
// (src/ops/optim.rs `gpu_foreach`, the fusion pass's `Foreach`). multi.wgsl says how a
// workgroup finds its member and elements.

// b0 p, b1 g, b2 p'.
@compute @workgroup_size(256)
fn sgd_multi(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_id) lid: vec3<u32>) {
    let s = span(wid, nwg);
    let o0 = cell(s.t, 2u);
    let o1 = cell(s.t, 3u);
    let o2 = cell(s.t, 4u);
    for (var i = s.start + lid.x; i < s.end; i = i + WORKGROUP) {
        let w = b0[o0 + i];
        b2[o2 + i] = w + -step.lr * sgd_grad(w, b1[o1 + i], 1.0);
    }
}

// b0 p, b1 g, b2 coef [], b3 p'.
@compute @workgroup_size(256)
fn sgd_clip_multi(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_id) lid: vec3<u32>) {
    let s = span(wid, nwg);
    let o0 = cell(s.t, 2u);
    let o1 = cell(s.t, 3u);
    let o2 = cell(s.t, 4u);
    let o3 = cell(s.t, 5u);
    for (var i = s.start + lid.x; i < s.end; i = i + WORKGROUP) {
        let w = b0[o0 + i];
        b3[o3 + i] = w + -step.lr * sgd_grad(w, b1[o1 + i], b2[o2]);
    }
}

// b0 p, b1 g, b2 buf, b3 p', b4 buf'.
@compute @workgroup_size(256)
fn sgd_momentum_multi(@builtin(workgroup_id) wid: vec3<u32>,
                      @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_id) lid: vec3<u32>) {
    let s = span(wid, nwg);
    let o0 = cell(s.t, 2u);
    let o1 = cell(s.t, 3u);
    let o2 = cell(s.t, 4u);
    let o3 = cell(s.t, 5u);
    let o4 = cell(s.t, 6u);
    for (var i = s.start + lid.x; i < s.end; i = i + WORKGROUP) {
        let r = sgd_momentum_update(b0[o0 + i], b1[o1 + i], b2[o2 + i], 1.0);
        b3[o3 + i] = r.x;
        b4[o4 + i] = r.y;
    }
}

// b0 p, b1 g, b2 buf, b3 coef [], b4 p', b5 buf'.
@compute @workgroup_size(256)
fn sgd_momentum_clip_multi(@builtin(workgroup_id) wid: vec3<u32>,
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
        let r = sgd_momentum_update(b0[o0 + i], b1[o1 + i], b2[o2 + i], b3[o3]);
        b4[o4 + i] = r.x;
        b5[o5 + i] = r.y;
    }
}

// b0 p, b1 g, b2 m, b3 v, b4 p', b5 m', b6 v'.
@compute @workgroup_size(256)
fn adam_multi(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_id) lid: vec3<u32>) {
    let s = span(wid, nwg);
    let o0 = cell(s.t, 2u);
    let o1 = cell(s.t, 3u);
    let o2 = cell(s.t, 4u);
    let o3 = cell(s.t, 5u);
    let o4 = cell(s.t, 6u);
    let o5 = cell(s.t, 7u);
    let o6 = cell(s.t, 8u);
    for (var i = s.start + lid.x; i < s.end; i = i + WORKGROUP) {
        let r = adam_update(b0[o0 + i], b1[o1 + i], b2[o2 + i], b3[o3 + i], 1.0);
        b4[o4 + i] = r.x;
        b5[o5 + i] = r.y;
        b6[o6 + i] = r.z;
    }
}

// b0 p, b1 g, b2 m, b3 v, b4 coef [], b5 p', b6 m', b7 v'.
@compute @workgroup_size(256)
fn adam_clip_multi(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_id) lid: vec3<u32>) {
    let s = span(wid, nwg);
    let o0 = cell(s.t, 2u);
    let o1 = cell(s.t, 3u);
    let o2 = cell(s.t, 4u);
    let o3 = cell(s.t, 5u);
    let o4 = cell(s.t, 6u);
    let o5 = cell(s.t, 7u);
    let o6 = cell(s.t, 8u);
    let o7 = cell(s.t, 9u);
    for (var i = s.start + lid.x; i < s.end; i = i + WORKGROUP) {
        let r = adam_update(b0[o0 + i], b1[o1 + i], b2[o2 + i], b3[o3 + i], b4[o4]);
        b5[o5 + i] = r.x;
        b6[o6 + i] = r.y;
        b7[o7 + i] = r.z;
    }
}

// b0 n, b1 n' (counters, one element each).
@compute @workgroup_size(256)
fn count_up_multi(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_id) lid: vec3<u32>) {
    let s = span(wid, nwg);
    let o0 = cell(s.t, 2u);
    let o1 = cell(s.t, 3u);
    for (var i = s.start + lid.x; i < s.end; i = i + WORKGROUP) {
        b1[o1 + i] = b0[o0 + i] + 1.0;
    }
}
