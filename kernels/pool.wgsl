// Max and average pooling over H and W of NCHW tensors, and their gradient (src/ops/pool.rs).
//
// A sectioned file: each `// @entry NAME` section is compiled with the shared head above the
// first section only (reduce.rs `section`).
//
// The CPU's rules exactly: windows clipped to the input (padding never wins a max and adds
// nothing to a sum), max takes the first maximum in window order or the last NaN, avg divides
// by kh*kw (count_include_pad). The gradient gathers: each input element sums, in increasing
// output order like the CPU's scatter, the outputs whose windows hold it; no atomics.

struct Params {
    // Input elements (gradient) or output elements (forward).
    total: u32,
    h: u32,
    w: u32,
    oh: u32,
    ow: u32,
    kh: u32,
    kw: u32,
    sh: u32,
    sw: u32,
    ph: u32,
    pw: u32,
    // 0: max, 1: avg.
    avg: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// NaN by its bits: a float comparison may be folded away by a compiler that assumes no NaN.
fn is_nan(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
}

// The clipped input span [start, end) of output index o along one dim (pool.rs `span`); the
// padding is at most half the kernel, so it is never empty.
fn span(o: u32, stride: u32, pad: u32, k: u32, len: u32) -> vec2<u32> {
    let start = i32(o * stride) - i32(pad);
    let end = min(start + i32(k), i32(len));
    return vec2<u32>(u32(max(start, 0)), u32(end));
}

// @entry pool_forward
// One thread per output element.
@group(0) @binding(2) var<storage, read_write> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn pool_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid);
    if (i >= p.total) {
        return;
    }
    let q = i % (p.oh * p.ow);
    let plane = (i / (p.oh * p.ow)) * p.h * p.w;
    let rows = span(q / p.ow, p.sh, p.ph, p.kh, p.h);
    let cols = span(q % p.ow, p.sw, p.pw, p.kw, p.w);
    if (p.avg == 1u) {
        var sum = 0.0;
        for (var iy = rows.x; iy < rows.y; iy = iy + 1u) {
            for (var ix = cols.x; ix < cols.y; ix = ix + 1u) {
                sum = sum + x[plane + iy * p.w + ix];
            }
        }
        y[i] = sum / f32(p.kh * p.kw);
        return;
    }
    // Starting from the first element instead of -inf picks the same index (pool.rs argmax).
    var best = rows.x * p.w + cols.x;
    var m = x[plane + best];
    for (var iy = rows.x; iy < rows.y; iy = iy + 1u) {
        for (var ix = cols.x; ix < cols.y; ix = ix + 1u) {
            let v = x[plane + iy * p.w + ix];
            if (v > m || is_nan(v)) {
                m = v;
                best = iy * p.w + ix;
            }
        }
    }
    y[i] = x[plane + best];
}

// @entry pool_backward
// One thread per input element: dx = the sum over outputs q whose window holds it (max: whose
// argmax it is) of dy[q] (avg: dy[q] / (kh*kw)), q increasing.
@group(0) @binding(2) var<storage, read_write> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> dy: array<f32>;
@group(0) @binding(4) var<storage, read_write> dx: array<f32>;

// The argmax in its plane of output q's window (as pool_forward).
fn argmax(plane: u32, q: u32) -> u32 {
    let rows = span(q / p.ow, p.sh, p.ph, p.kh, p.h);
    let cols = span(q % p.ow, p.sw, p.pw, p.kw, p.w);
    var best = rows.x * p.w + cols.x;
    var m = x[plane + best];
    for (var iy = rows.x; iy < rows.y; iy = iy + 1u) {
        for (var ix = cols.x; ix < cols.y; ix = ix + 1u) {
            let v = x[plane + iy * p.w + ix];
            if (v > m || is_nan(v)) {
                m = v;
                best = iy * p.w + ix;
            }
        }
    }
    return best;
}

// The outputs [first, last] along one dim whose windows hold input index i; empty when
// first > last (as i32, since last may be -1).
fn covering(i: u32, stride: u32, pad: u32, k: u32, n_out: u32) -> vec2<i32> {
    // o*stride - pad <= i < o*stride - pad + k.
    let hi = i32(i + pad) / i32(stride);
    let lo_num = i32(i + pad) - i32(k) + 1;
    var lo = 0;
    if (lo_num > 0) {
        lo = (lo_num + i32(stride) - 1) / i32(stride);
    }
    return vec2<i32>(lo, min(hi, i32(n_out) - 1));
}

@compute @workgroup_size(256)
fn pool_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid);
    if (i >= p.total) {
        return;
    }
    let e = i % (p.h * p.w);
    let c = i / (p.h * p.w);
    let plane = c * p.h * p.w;
    let out_plane = c * p.oh * p.ow;
    let ys = covering(e / p.w, p.sh, p.ph, p.kh, p.oh);
    let xs = covering(e % p.w, p.sw, p.pw, p.kw, p.ow);
    let area = f32(p.kh * p.kw);
    var acc = 0.0;
    for (var oy = ys.x; oy <= ys.y; oy = oy + 1) {
        for (var ox = xs.x; ox <= xs.y; ox = ox + 1) {
            let q = u32(oy) * p.ow + u32(ox);
            if (p.avg == 1u) {
                acc = acc + dy[out_plane + q] / area;
            } else if (argmax(plane, q) == e) {
                acc = acc + dy[out_plane + q];
            }
        }
    }
    dx[i] = acc;
}
