//! 2-D convolution, NCHW input, OIHW weight, no bias (PyTorch's `F.conv2d(x, w, None, stride,
//! padding, dilation, groups)`: zero padding, floor output size, group g owning input channels
//! g*C/G.. and output channels g*O/G..), and its two gradients. CPU kernels: im2col + GEMM per
//! image and group on the packed weights, parallel over runs of images, in workspace the
//! executor sizes from `Eval::scratch` (nothing allocated per call).

mod direct;
mod geom;

use rayon::prelude::*;
use serde::Serialize;

use self::direct::{GradWindows, PhaseGrad, WindowGrad, Windows, f32s, f32s_mut, is_f32};
use self::geom::{Geom, Work, grad_weight_runs};

use super::{
    Cost, Eval, OpKind, Primitive, ShapeResult, VjpArgs, VjpCx, VjpResult, expect_arity, expect_f32,
};

use crate::kernel::cpu::{Io, Mat, Real, pack_lhs, pack_with, packed_bound, packed_len, product};
use crate::kernel::gpu::{Bind, Dispatch, Gemm, KernelArgs, Params, transpose_pays, transposed};
use crate::tensor::{TensorType, fmt_shape};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Conv2d {
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
    pub groups: usize,
}

/// Output size of a sliding window along one dim (PyTorch's formula), or None if the window
/// does not fit.
pub fn window_out(
    input: usize,
    kernel: usize,
    stride: usize,
    pad: usize,
    dilation: usize,
) -> Option<usize> {
    let span = dilation * (kernel - 1) + 1;
    let padded = input + 2 * pad;
    (padded >= span).then(|| (padded - span) / stride + 1)
}

fn expect_image(t: &TensorType, what: &str) -> Result<[usize; 4], String> {
    match t.shape[..] {
        [n, c, h, w] => Ok([n, c, h, w]),
        _ => Err(format!(
            "expects {what} [N, C, H, W], got {}: put a reshape before it",
            fmt_shape(&t.shape)
        )),
    }
}

impl Conv2d {
    /// The output's spatial size for an input of `hw` and a kernel of `k`, or why it does not fit.
    fn out_hw(&self, hw: [usize; 2], k: [usize; 2]) -> Result<[usize; 2], String> {
        if self.stride.contains(&0) || self.dilation.contains(&0) || self.groups == 0 {
            return Err(format!(
                "stride {:?}, dilation {:?} and groups {} must be at least 1",
                self.stride, self.dilation, self.groups
            ));
        }
        if k.contains(&0) {
            return Err(format!("a {}x{} kernel is empty", k[0], k[1]));
        }
        let oh = window_out(
            hw[0],
            k[0],
            self.stride[0],
            self.padding[0],
            self.dilation[0],
        );
        let ow = window_out(
            hw[1],
            k[1],
            self.stride[1],
            self.padding[1],
            self.dilation[1],
        );
        match (oh, ow) {
            (Some(oh), Some(ow)) => Ok([oh, ow]),
            _ => Err(format!(
                "a {}x{} kernel (dilation {:?}, padding {:?}) does not fit a {}x{} input",
                k[0], k[1], self.dilation, self.padding, hw[0], hw[1]
            )),
        }
    }
    /// Checks that `groups` splits `c` input and `o` output channels.
    fn check_groups(&self, c: usize, o: usize) -> Result<(), String> {
        if !c.is_multiple_of(self.groups) || !o.is_multiple_of(self.groups) {
            return Err(format!(
                "groups = {} must divide both the input channels ({c}) and the output channels ({o})",
                self.groups
            ));
        }
        Ok(())
    }
    fn attr_list(&self) -> Vec<(&'static str, String)> {
        vec![
            ("stride", format!("{:?}", self.stride)),
            ("padding", format!("{:?}", self.padding)),
            ("dilation", format!("{:?}", self.dilation)),
            ("groups", self.groups.to_string()),
        ]
    }
}

impl Primitive for Conv2d {
    fn name(&self) -> &'static str {
        "conv2d"
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        expect_arity(inputs, 2)?;
        let (x, w) = (inputs[0], inputs[1]);
        expect_f32(x, "the input")?;
        expect_f32(w, "the weight")?;
        let [n, c, h, wd] = expect_image(x, "an image batch")?;
        let [o, ci, kh, kw] = expect_image(w, "a weight")?;
        let [oh, ow] = self.out_hw([h, wd], [kh, kw])?;
        self.check_groups(c, o)?;
        if ci * self.groups != c {
            return Err(format!(
                "input has {c} channels, the weight expects {}",
                ci * self.groups
            ));
        }
        Ok(vec![TensorType::f32(vec![n, o, oh, ow])])
    }
    fn flops(&self, inputs: &[&TensorType], out: &[TensorType]) -> u64 {
        let w = &inputs[1].shape;
        let macs_per_out = (w[1] * w[2] * w[3]) as u64;
        (2 * macs_per_out).saturating_mul(out[0].numel() as u64)
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        self.attr_list()
    }
    fn cost(&self) -> Cost {
        Cost::Compute
    }
    fn gpu(&self, args: &KernelArgs) -> Result<Vec<Dispatch>, String> {
        let ws = &args.inputs[1].shape;
        let g = Geom::new(
            self,
            &args.inputs[0].shape,
            &args.outputs[0].shape,
            [ws[2], ws[3]],
        );
        conv_kernel(&g, GpuMode::Forward)
    }
    fn vjp(&self, cx: &mut VjpCx, a: &VjpArgs) -> VjpResult {
        let dy = a.dy()?;
        let (x, w) = (a.inputs[0], a.inputs[1]);
        let dx = match a.wants(0) {
            true => {
                let s = &cx.ty(x).shape;
                let op = Conv2dGradInput {
                    conv: self.clone(),
                    input: [s[2], s[3]],
                };
                Some(cx.op(OpKind::Conv2dGradInput(op), &[dy, w])?)
            }
            false => None,
        };
        let dw = match a.wants(1) {
            true => {
                let s = &cx.ty(w).shape;
                let op = Conv2dGradWeight {
                    conv: self.clone(),
                    kernel: [s[2], s[3]],
                };
                Some(cx.op(OpKind::Conv2dGradWeight(op), &[x, dy])?)
            }
            false => None,
        };
        Ok(vec![dx, dw])
    }
}

/// `dx` of a convolution: inputs dy [N, O, OH, OW], w [O, C/G, kh, kw] → [N, C, H, W]. The
/// input's size is an attribute because a stride > 1 may have dropped its last rows/columns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Conv2dGradInput {
    pub conv: Conv2d,
    /// The convolution input's [H, W].
    pub input: [usize; 2],
}

impl Primitive for Conv2dGradInput {
    fn name(&self) -> &'static str {
        "conv2d_grad_input"
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        expect_arity(inputs, 2)?;
        let [n, o, oh, ow] = expect_image(inputs[0], "dy")?;
        let [wo, ci, kh, kw] = expect_image(inputs[1], "a weight")?;
        let out = self.conv.out_hw(self.input, [kh, kw])?;
        self.conv.check_groups(ci * self.conv.groups, o)?;
        if wo != o || out != [oh, ow] {
            return Err(format!(
                "dy {} does not fit weight {} on a {:?} input",
                fmt_shape(&inputs[0].shape),
                fmt_shape(&inputs[1].shape),
                self.input
            ));
        }
        let [h, w] = self.input;
        Ok(vec![TensorType::f32(vec![n, ci * self.conv.groups, h, w])])
    }
    fn flops(&self, inputs: &[&TensorType], _: &[TensorType]) -> u64 {
        let w = &inputs[1].shape;
        (2 * (w[1] * w[2] * w[3]) as u64).saturating_mul(inputs[0].numel() as u64)
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        let mut a = self.conv.attr_list();
        a.push(("input", format!("{:?}", self.input)));
        a
    }
    fn cost(&self) -> Cost {
        Cost::Compute
    }
    fn gpu(&self, args: &KernelArgs) -> Result<Vec<Dispatch>, String> {
        let ws = &args.inputs[1].shape;
        let g = Geom::new(
            &self.conv,
            &args.outputs[0].shape,
            &args.inputs[0].shape,
            [ws[2], ws[3]],
        );
        conv_kernel(&g, GpuMode::GradInput)
    }
}

/// `dw` of a convolution: inputs x [N, C, H, W], dy [N, O, OH, OW] → [O, C/G, kh, kw].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Conv2dGradWeight {
    pub conv: Conv2d,
    /// The weight's [kh, kw].
    pub kernel: [usize; 2],
}

impl Primitive for Conv2dGradWeight {
    fn name(&self) -> &'static str {
        "conv2d_grad_weight"
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        expect_arity(inputs, 2)?;
        let [n, c, h, w] = expect_image(inputs[0], "an image batch")?;
        let [dn, o, oh, ow] = expect_image(inputs[1], "dy")?;
        let out = self.conv.out_hw([h, w], self.kernel)?;
        self.conv.check_groups(c, o)?;
        if dn != n || out != [oh, ow] {
            return Err(format!(
                "dy {} does not fit input {} and a {:?} kernel",
                fmt_shape(&inputs[1].shape),
                fmt_shape(&inputs[0].shape),
                self.kernel
            ));
        }
        let [kh, kw] = self.kernel;
        Ok(vec![TensorType::f32(vec![o, c / self.conv.groups, kh, kw])])
    }
    fn flops(&self, inputs: &[&TensorType], out: &[TensorType]) -> u64 {
        let dy = &inputs[1].shape;
        (2 * (dy[0] * dy[2] * dy[3]) as u64).saturating_mul(out[0].numel() as u64)
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        let mut a = self.conv.attr_list();
        a.push(("kernel", format!("{:?}", self.kernel)));
        a
    }
    fn cost(&self) -> Cost {
        Cost::Compute
    }
    fn gpu(&self, args: &KernelArgs) -> Result<Vec<Dispatch>, String> {
        let g = Geom::new(
            &self.conv,
            &args.inputs[0].shape,
            &args.inputs[1].shape,
            self.kernel,
        );
        conv_kernel(&g, GpuMode::GradWeight)
    }
}

/// Which GEMM kernels/conv.wgsl runs (its `MODE`).
#[derive(Clone, Copy)]
enum GpuMode {
    Forward = 0,
    GradInput = 1,
    GradWeight = 2,
}

/// The implicit GEMM of kernels/conv.wgsl for `mode` on kernels/gemm.wgsl, over inputs 0, 1
/// and output 0, one GEMM per group; the input gradient one per stride phase.
fn conv_kernel(g: &Geom, mode: GpuMode) -> Result<Vec<Dispatch>, String> {
    let whole = Phase {
        first: [0, 0],
        size: [g.h, g.w],
        taps: [(0, 1, g.kh), (0, 1, g.kw)],
    };
    match mode {
        GpuMode::Forward => conv_gemm(g, mode, &whole, (g.og(), g.n * g.p(), g.k())),
        GpuMode::GradWeight => conv_gemm(g, mode, &whole, (g.og(), g.k(), g.n * g.p())),
        GpuMode::GradInput => {
            let mut ds = Vec::new();
            for py in 0..g.stride[0].min(g.h) {
                for px in 0..g.stride[1].min(g.w) {
                    let ph = Phase::of(g, [py, px]);
                    let shape = (
                        g.cg(),
                        g.n * ph.size[0] * ph.size[1],
                        g.og() * ph.taps[0].2 * ph.taps[1].2,
                    );
                    ds.extend(conv_gemm(g, mode, &ph, shape)?);
                }
            }
            Ok(ds)
        }
    }
}

/// One stride phase of the input gradient: the input pixels (first + stride·u, ..) and the
/// kernel taps that reach them, per dim as (first, step, count). The whole image and every
/// tap for the other modes.
struct Phase {
    first: [usize; 2],
    size: [usize; 2],
    taps: [(usize, usize, usize); 2],
}

impl Phase {
    fn of(g: &Geom, first: [usize; 2]) -> Phase {
        let dim = |d: usize, len: usize, k: usize| {
            // Tap ki reaches this phase's pixels when (first + pad - ki·dil) ≡ 0 (mod stride):
            // a congruence, so the taps that do are an arithmetic progression.
            let reach: Vec<usize> = (0..k)
                .filter(|&ki| {
                    (first[d] as isize + g.pad[d] as isize - (ki * g.dil[d]) as isize)
                        .rem_euclid(g.stride[d] as isize)
                        == 0
                })
                .collect();
            let step = if reach.len() > 1 {
                reach[1] - reach[0]
            } else {
                1
            };
            let size = (len - first[d]).div_ceil(g.stride[d]);
            (
                size,
                (reach.first().copied().unwrap_or(0), step, reach.len()),
            )
        };
        let (h, ty) = dim(0, g.h, g.kh);
        let (w, tx) = dim(1, g.w, g.kw);
        Phase {
            first,
            size: [h, w],
            taps: [ty, tx],
        }
    }
}

fn conv_gemm(
    g: &Geom,
    mode: GpuMode,
    ph: &Phase,
    (rows, cols, inner): (usize, usize, usize),
) -> Result<Vec<Dispatch>, String> {
    const TEXT: &str = include_str!("../../kernels/conv.wgsl");
    // A large forward multiplies by wᵀ [cg*kh*kw, o] copied into the workspace (kernel::gpu::
    // transpose_pays): read along its rows, it stages faster than w's rows along k.
    let macs = rows.saturating_mul(cols).saturating_mul(inner);
    let pays = matches!(mode, GpuMode::Forward) && g.groups == 1 && g.o >= 4;
    let copy = (pays && transpose_pays(macs, cols)).then(|| transposed(Bind::In(1), g.o, inner));
    let operands = TEXT
        .replacen(
            "const MODE: u32 = 0u;",
            &format!("const MODE: u32 = {}u;", mode as u32),
            1,
        )
        .replacen(
            "const W_T: u32 = 0u;",
            &format!("const W_T: u32 = {}u;", u32::from(copy.is_some())),
            1,
        );
    let [(ki0, ks_y, nky), (kj0, ks_x, nkx)] = ph.taps;
    let params = Params::new()
        .u32(g.n)
        .u32(g.c)
        .u32(g.h)
        .u32(g.w)
        .u32(g.o)
        .u32(g.kh)
        .u32(g.kw)
        .u32(g.oh)
        .u32(g.ow)
        .u32(g.stride[0])
        .u32(g.stride[1])
        .u32(g.pad[0])
        .u32(g.pad[1])
        .u32(g.dil[0])
        .u32(g.dil[1])
        .u32(g.groups)
        .u32(ph.first[0])
        .u32(ph.first[1])
        .u32(ph.size[0])
        .u32(ph.size[1])
        .u32(ki0)
        .u32(ks_y)
        .u32(nky)
        .u32(kj0)
        .u32(ks_x)
        .u32(nkx);
    let (w, at) = copy
        .as_ref()
        .map_or((Bind::In(1), 0), |&(_, wt, at)| (wt, at));
    let gemm = Gemm {
        operands,
        params,
        rows,
        cols,
        inner,
        groups: g.groups,
        inputs: [Bind::In(0), w],
        epilogue: None,
    }
    .dispatches_from(at)?;
    Ok(copy.map(|(d, _, _)| d).into_iter().chain(gemm).collect())
}

/// The outputs `lo..hi` along one dim whose tap `out * stride + off` lies inside `0..len`.
fn valid(outs: usize, stride: usize, off: isize, len: usize) -> (usize, usize) {
    let lo = if off >= 0 {
        0
    } else {
        off.unsigned_abs().div_ceil(stride)
    };
    let end = len as isize - off;
    let hi = if end <= 0 {
        0
    } else {
        (end as usize).div_ceil(stride).min(outs)
    };
    (lo.min(hi), hi)
}

/// Tap offset of kernel index `k` along one dim.
fn tap(k: usize, dil: usize, pad: usize) -> isize {
    (k * dil) as isize - pad as isize
}

/// Unfolds one image's group of channels `x [cg, h, w]` into `cols [cg*kh*kw, oh*ow]`, with
/// zeros where a tap falls in the padding.
fn im2col<T: Real>(g: &Geom, x: &[T], cols: &mut [T]) {
    let (p, ow, [sy, sx]) = (g.p(), g.ow, g.stride);
    for ci in 0..g.cg() {
        let plane = &x[ci * g.hw()..][..g.hw()];
        for ki in 0..g.kh {
            let offy = tap(ki, g.dil[0], g.pad[0]);
            let (ylo, yhi) = valid(g.oh, sy, offy, g.h);
            for kj in 0..g.kw {
                let offx = tap(kj, g.dil[1], g.pad[1]);
                let (xlo, xhi) = valid(ow, sx, offx, g.w);
                let row = (ci * g.kh + ki) * g.kw + kj;
                let dst = &mut cols[row * p..][..p];
                dst[..ylo * ow].fill(T::ZERO);
                dst[yhi * ow..].fill(T::ZERO);
                for oy in ylo..yhi {
                    let iy = ((oy * sy) as isize + offy) as usize;
                    let src = &plane[iy * g.w..][..g.w];
                    let d = &mut dst[oy * ow..][..ow];
                    d[..xlo].fill(T::ZERO);
                    d[xhi..].fill(T::ZERO);
                    if xhi == xlo {
                        continue;
                    }
                    let ix0 = ((xlo * sx) as isize + offx) as usize;
                    if sx == 1 {
                        d[xlo..xhi].copy_from_slice(&src[ix0..ix0 + xhi - xlo]);
                    } else {
                        for (v, &s) in d[xlo..xhi].iter_mut().zip(src[ix0..].iter().step_by(sx)) {
                            *v = s;
                        }
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: sums `cols [cg*kh*kw, oh*ow]` back into `x [cg, h, w]`, which it
/// overwrites, in a fixed order (kernel row, kernel column, output pixel).
fn col2im<T: Real>(g: &Geom, cols: &[T], x: &mut [T]) {
    x.fill(T::ZERO);
    let (p, ow, [sy, sx]) = (g.p(), g.ow, g.stride);
    for ci in 0..g.cg() {
        let plane = &mut x[ci * g.hw()..][..g.hw()];
        for ki in 0..g.kh {
            let offy = tap(ki, g.dil[0], g.pad[0]);
            let (ylo, yhi) = valid(g.oh, sy, offy, g.h);
            for kj in 0..g.kw {
                let offx = tap(kj, g.dil[1], g.pad[1]);
                let (xlo, xhi) = valid(ow, sx, offx, g.w);
                if xhi == xlo {
                    continue;
                }
                let row = (ci * g.kh + ki) * g.kw + kj;
                let src = &cols[row * p..][..p];
                for oy in ylo..yhi {
                    let iy = ((oy * sy) as isize + offy) as usize;
                    let dst = &mut plane[iy * g.w..][..g.w];
                    let s = &src[oy * ow + xlo..oy * ow + xhi];
                    let ix0 = ((xlo * sx) as isize + offx) as usize;
                    if sx == 1 {
                        // Contiguous: a plain zip vectorises, `step_by` does not.
                        for (d, &v) in dst[ix0..ix0 + s.len()].iter_mut().zip(s) {
                            *d += v;
                        }
                    } else {
                        for (d, &v) in dst[ix0..].iter_mut().step_by(sx).zip(s) {
                            *d += v;
                        }
                    }
                }
            }
        }
    }
}

/// A convolution's sizes from its attributes and the shapes of its input, output and kernel.
impl Geom {
    fn new(conv: &Conv2d, x: &[usize], y: &[usize], k: [usize; 2]) -> Geom {
        Geom {
            n: x[0],
            c: x[1],
            h: x[2],
            w: x[3],
            o: y[1],
            kh: k[0],
            kw: k[1],
            oh: y[2],
            ow: y[3],
            stride: conv.stride,
            pad: conv.padding,
            dil: conv.dilation,
            groups: conv.groups,
        }
    }
}

/// Threads that share a launch's images: at most one per image.
fn workers(items: usize, threads: usize) -> usize {
    threads.min(items).max(1)
}

/// The flipped geometry of a stride-1 convolution's input gradient: dx is the convolution of
/// dy with the weights transposed (in/out channels swapped) and rotated 180°, padded by
/// dilation·(k−1) − padding, which must not be negative.
fn flipped(g: &Geom) -> Option<Geom> {
    let pad = |d: usize, k: usize| (g.dil[d] * (k - 1)).checked_sub(g.pad[d]);
    match (g.stride, pad(0, g.kh), pad(1, g.kw)) {
        ([1, 1], Some(py), Some(px)) => Some(Geom {
            n: g.n,
            c: g.o,
            h: g.oh,
            w: g.ow,
            o: g.c,
            kh: g.kh,
            kw: g.kw,
            oh: g.h,
            ow: g.w,
            stride: [1, 1],
            pad: [py, px],
            dil: g.dil,
            groups: g.groups,
        }),
        _ => None,
    }
}

/// Workspace of a forward convolution of geometry `g` (also the flipped input gradient).
fn forward_work(g: &Geom) -> Work {
    Work {
        packed: g.groups * packed_bound(g.og(), g.k()),
        accs: 0,
        slot: g.cols_len().max(1),
    }
}

/// y = conv(x, w) for geometry `g`, given the weights of each group packed as the `og x k`
/// left operand (`pl` elements apart), in parallel over runs of images, one per slot of
/// `cols`.
fn forward<T: Real>(g: &Geom, x: &[T], packed: &[T], pl: usize, y: &mut [T], cols: &mut [T]) {
    let (cg, og, k, p, hw) = (g.cg(), g.og(), g.k(), g.p(), g.hw());
    let (image, slot) = (g.o * p, g.cols_len().max(1));
    if y.is_empty() {
        return;
    }
    let slots = cols.len() / slot;
    let per = g.n.div_ceil(slots);
    // With fewer images than threads, each product is split across the pool too.
    let inner = g.n.div_ceil(per) < rayon::current_num_threads();
    y.par_chunks_mut(per * image)
        .zip(cols.par_chunks_mut(slot))
        .enumerate()
        .for_each(|(run, (ys, cols))| {
            for (i, y) in ys.chunks_mut(image).enumerate() {
                let xi = &x[(run * per + i) * g.c * hw..][..g.c * hw];
                for gi in 0..g.groups {
                    let xg = &xi[gi * cg * hw..][..cg * hw];
                    let b = if g.pointwise() {
                        xg
                    } else {
                        im2col(g, xg, cols);
                        &cols[..k * p]
                    };
                    product(
                        &packed[gi * pl..][..pl],
                        og,
                        k,
                        b,
                        Mat::rows(k, p),
                        &mut y[gi * og * p..][..og * p],
                        Mat::rows(og, p),
                        false,
                        inner,
                    );
                }
            }
        });
}

impl Eval for Conv2d {
    fn eval<T: Real>(&self, io: &mut Io<'_, T>) {
        let ws = io.in_shape(1);
        let g = Geom::new(self, io.in_shape(0), io.out_shape(0), [ws[2], ws[3]]);
        let most = workers(g.n, rayon::current_num_threads());
        if let Some(win) = Windows::new(&g).filter(|_| is_f32::<T>()) {
            let work = win.work(&g);
            let slots = work.slots(io.scratch_len(), most);
            let (ins, [y], scratch) = io.split_scratch::<1>(work.len(slots));
            let [x, w] = ins.array();
            let (w, scratch) = (f32s(w), f32s_mut(scratch));
            let (packed, grids) = scratch.split_at_mut(work.packed);
            let (cg, og, taps) = (g.cg(), g.og(), g.kh * g.kw);
            win.pack(&g, packed, |gi, o, c, t| {
                w[((gi * og + o) * cg + c) * taps + t]
            });
            win.run(&g, f32s(x), packed, f32s_mut(y), grids);
            return;
        }
        let work = forward_work(&g);
        let slots = work.slots(io.scratch_len(), most);
        let (ins, [y], scratch) = io.split_scratch::<1>(work.len(slots));
        let [x, w] = ins.array();
        let (packed, cols) = scratch.split_at_mut(work.packed);
        let (og, k) = (g.og(), g.k());
        let pl = packed_len::<T>(og, k);
        for gi in 0..g.groups {
            pack_lhs(
                &w[gi * og * k..][..og * k],
                Mat::rows(og, k),
                &mut packed[gi * pl..],
            );
        }
        forward(&g, x, packed, pl, y, cols);
    }
    fn scratch(&self, inputs: &[&TensorType], outputs: &[TensorType], threads: usize) -> usize {
        let ws = &inputs[1].shape;
        let g = Geom::new(self, &inputs[0].shape, &outputs[0].shape, [ws[2], ws[3]]);
        let slots = workers(g.n, threads);
        let direct = Windows::new(&g).map_or(0, |win| win.work(&g).len(slots));
        forward_work(&g).len(slots).max(direct)
    }
}

/// Workspace of an input gradient: the flipped forward convolution's, or the weights packed
/// transposed and one unfolded-gradient (col2im) buffer per slot.
fn grad_input_work(g: &Geom) -> Work {
    match flipped(g) {
        Some(f) => forward_work(&f),
        None => Work {
            packed: g.groups * packed_bound(g.k(), g.og()),
            accs: 0,
            slot: g.cols_len().max(1),
        },
    }
}

impl Eval for Conv2dGradInput {
    fn eval<T: Real>(&self, io: &mut Io<'_, T>) {
        let ws = io.in_shape(1);
        let g = Geom::new(&self.conv, io.out_shape(0), io.in_shape(0), [ws[2], ws[3]]);
        let most = workers(g.n, rayon::current_num_threads());
        let flipped_windows = flipped(&g).and_then(|f| Some((Windows::new(&f)?, f)));
        if let Some((win, f)) = flipped_windows.filter(|_| is_f32::<T>()) {
            let work = win.work(&f);
            let slots = work.slots(io.scratch_len(), most);
            let (ins, [dx], scratch) = io.split_scratch::<1>(work.len(slots));
            let [dy, w] = ins.array();
            let (w, scratch) = (f32s(w), f32s_mut(scratch));
            let (packed, grids) = scratch.split_at_mut(work.packed);
            // The flipped convolution's output channels are x's, its inputs dy's.
            let (cg, og, taps) = (g.cg(), g.og(), g.kh * g.kw);
            win.pack(&f, packed, |gi, c, o, t| {
                w[((gi * og + o) * cg + c) * taps + taps - 1 - t]
            });
            win.run(&f, f32s(dy), packed, f32s_mut(dx), grids);
            return;
        }
        if let Some(pg) = PhaseGrad::new(&g).filter(|_| is_f32::<T>()) {
            let work = pg.work(&g);
            let slots = work.slots(io.scratch_len(), most);
            let (ins, [dx], scratch) = io.split_scratch::<1>(work.len(slots));
            let [dy, w] = ins.array();
            let (packed, grids) = f32s_mut(scratch).split_at_mut(work.packed);
            pg.pack(&g, f32s(w), packed);
            pg.run(&g, f32s(dy), packed, f32s_mut(dx), grids);
            return;
        }
        let work = grad_input_work(&g);
        let slots = work.slots(io.scratch_len(), most);
        let (ins, [dx], scratch) = io.split_scratch::<1>(work.len(slots));
        let [dy, w] = ins.array();
        let (packed, cols) = scratch.split_at_mut(work.packed);
        let (cg, og, k, p, hw) = (g.cg(), g.og(), g.k(), g.p(), g.hw());
        let khw = g.kh * g.kw;
        if let Some(f) = flipped(&g) {
            // w' [c, (o, i, j)] = w [o, c, kh-1-i, kw-1-j], each group's [cg, og·kh·kw].
            let pl = packed_len::<T>(cg, f.k());
            for gi in 0..g.groups {
                let wg = &w[gi * og * k..][..og * k];
                pack_with(cg, f.k(), &mut packed[gi * pl..], |c, q| {
                    let (o, tap) = (q / khw, q % khw);
                    wg[(o * cg + c) * khw + khw - 1 - tap]
                });
            }
            forward(&f, dy, packed, pl, dx, cols);
            return;
        }
        // Strided: dcols [k, p] = wᵀ [k, og] · dy [og, p] per image and group, then col2im.
        let pl = packed_len::<T>(k, og);
        for gi in 0..g.groups {
            pack_lhs(
                &w[gi * og * k..][..og * k],
                Mat::rows(og, k).t(),
                &mut packed[gi * pl..],
            );
        }
        if dx.is_empty() {
            return;
        }
        let (image, slot) = (g.c * hw, work.slot);
        let per = g.n.div_ceil(cols.len() / slot);
        dx.par_chunks_mut(per * image)
            .zip(cols.par_chunks_mut(slot))
            .enumerate()
            .for_each(|(run, (dxs, cols))| {
                for (i, dx) in dxs.chunks_mut(image).enumerate() {
                    let dyi = &dy[(run * per + i) * g.o * p..][..g.o * p];
                    for gi in 0..g.groups {
                        product(
                            &packed[gi * pl..][..pl],
                            k,
                            og,
                            &dyi[gi * og * p..][..og * p],
                            Mat::rows(og, p),
                            &mut cols[..k * p],
                            Mat::rows(k, p),
                            false,
                            false,
                        );
                        col2im(&g, &cols[..k * p], &mut dx[gi * cg * hw..][..cg * hw]);
                    }
                }
            });
    }
    fn scratch(&self, inputs: &[&TensorType], outputs: &[TensorType], threads: usize) -> usize {
        let ws = &inputs[1].shape;
        let g = Geom::new(
            &self.conv,
            &outputs[0].shape,
            &inputs[0].shape,
            [ws[2], ws[3]],
        );
        let slots = workers(g.n, threads);
        let direct = match flipped(&g) {
            Some(f) => Windows::new(&f).map_or(0, |win| win.work(&f).len(slots)),
            None => PhaseGrad::new(&g).map_or(0, |pg| pg.work(&g).len(slots)),
        };
        grad_input_work(&g).len(slots).max(direct)
    }
}

/// Workspace of a weight gradient: an accumulator per run, and per slot an im2col buffer and
/// each group's dy packed as the left operand.
fn grad_weight_work(g: &Geom) -> Work {
    let (_, runs) = grad_weight_runs(g.n);
    Work {
        packed: 0,
        accs: runs * g.o * g.k(),
        slot: (g.cols_len() + g.groups * packed_bound(g.og(), g.p())).max(1),
    }
}

impl Eval for Conv2dGradWeight {
    fn eval<T: Real>(&self, io: &mut Io<'_, T>) {
        let g = Geom::new(&self.conv, io.in_shape(0), io.in_shape(1), self.kernel);
        let (per, runs) = grad_weight_runs(g.n);
        let most = workers(runs, rayon::current_num_threads());
        if let Some(wg) = WindowGrad::new(&g).filter(|_| is_f32::<T>() && g.n > 0) {
            let work = wg.work(&g);
            let slots = work.slots(io.scratch_len(), most);
            let (ins, [dw], scratch) = io.split_scratch::<1>(work.len(slots));
            let [x, dy] = ins.array();
            wg.run(&g, f32s(x), f32s(dy), f32s_mut(dw), f32s_mut(scratch));
            return;
        }
        if let Some(gw) = GradWindows::new(&g).filter(|_| is_f32::<T>() && g.n > 0) {
            let work = gw.work(&g);
            let slots = work.slots(io.scratch_len(), most);
            let (ins, [dw], scratch) = io.split_scratch::<1>(work.len(slots));
            let [x, dy] = ins.array();
            gw.run(&g, f32s(x), f32s(dy), f32s_mut(dw), f32s_mut(scratch));
            return;
        }
        let work = grad_weight_work(&g);
        let slots = work.slots(io.scratch_len(), most);
        let (ins, [dw], scratch) = io.split_scratch::<1>(work.len(slots));
        let [x, dy] = ins.array();
        let (cg, og, k, p, hw) = (g.cg(), g.og(), g.k(), g.p(), g.hw());
        if dw.is_empty() {
            return;
        }
        if g.n == 0 {
            dw.fill(T::ZERO);
            return;
        }
        let (accs, slot_mem) = scratch.split_at_mut(work.accs);
        let len = dw.len();
        let pl = packed_len::<T>(og, p);
        // Slot s sums runs s·rps.. into their own accumulators.
        let rps = runs.div_ceil(slots);
        accs.par_chunks_mut(rps * len)
            .zip(slot_mem.par_chunks_mut(work.slot))
            .enumerate()
            .for_each(|(s, (accs, mem))| {
                let (cols, dyp) = mem.split_at_mut(g.cols_len());
                for (r, acc) in accs.chunks_mut(len).enumerate() {
                    let run = s * rps + r;
                    let images = run * per..((run + 1) * per).min(g.n);
                    for n in images.clone() {
                        for gi in 0..g.groups {
                            let xg = &x[(n * g.c + gi * cg) * hw..][..cg * hw];
                            let b = if g.pointwise() {
                                xg
                            } else {
                                im2col(&g, xg, cols);
                                &cols[..k * p]
                            };
                            let dyp = &mut dyp[gi * pl..][..pl];
                            pack_lhs(
                                &dy[(n * g.o + gi * og) * p..][..og * p],
                                Mat::rows(og, p),
                                dyp,
                            );
                            // acc_g [og, k] (+)= dy_g [og, p] · colsᵀ [p, k]
                            product(
                                dyp,
                                og,
                                p,
                                b,
                                Mat::rows(k, p).t(),
                                &mut acc[gi * og * k..][..og * k],
                                Mat::rows(og, k),
                                n != images.start,
                                false,
                            );
                        }
                    }
                }
            });
        // The runs in order, so the sum over images has one order.
        dw.copy_from_slice(&accs[..len]);
        for part in accs[len..].chunks(len) {
            for (d, &v) in dw.iter_mut().zip(part) {
                *d += v;
            }
        }
    }
    fn scratch(&self, inputs: &[&TensorType], _: &[TensorType], threads: usize) -> usize {
        let g = Geom::new(&self.conv, &inputs[0].shape, &inputs[1].shape, self.kernel);
        let (_, runs) = grad_weight_runs(g.n);
        let slots = workers(runs, threads);
        let direct = match WindowGrad::new(&g) {
            Some(wg) => wg.work(&g).len(slots),
            None => GradWindows::new(&g).map_or(0, |gw| gw.work(&g).len(slots)),
        };
        grad_weight_work(&g).len(slots).max(direct)
    }
}

#[cfg(test)]
mod tests {
    use crate::ops::testing::assert_matches_definition as assert_close;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::gradcheck::{Arg, check_op};
    use crate::tensor::StepCtx;

    fn conv(
        stride: [usize; 2],
        padding: [usize; 2],
        dilation: [usize; 2],
        groups: usize,
    ) -> Conv2d {
        Conv2d {
            stride,
            padding,
            dilation,
            groups,
        }
    }

    /// (x shape, w shape, conv): odd sizes, batch 1, groups, dilation, stride dropping rows,
    /// padding 0..3, 1x1 (pointwise and not) and 7x7 kernels.
    fn cases() -> Vec<([usize; 4], [usize; 4], Conv2d)> {
        vec![
            ([1, 3, 7, 5], [4, 3, 3, 3], conv([1, 1], [1, 1], [1, 1], 1)),
            ([2, 6, 7, 5], [6, 2, 3, 2], conv([2, 2], [1, 2], [1, 1], 3)),
            ([2, 3, 9, 7], [5, 3, 3, 3], conv([2, 1], [3, 0], [2, 2], 1)),
            ([2, 3, 8, 6], [4, 3, 3, 3], conv([2, 2], [0, 0], [1, 1], 1)),
            ([1, 3, 7, 5], [2, 3, 1, 1], conv([1, 1], [0, 0], [1, 1], 1)),
            ([2, 6, 5, 7], [4, 3, 1, 1], conv([1, 1], [0, 0], [1, 1], 2)),
            ([2, 4, 7, 5], [3, 4, 1, 1], conv([2, 2], [1, 1], [1, 1], 1)),
            ([1, 3, 11, 9], [2, 3, 7, 7], conv([1, 1], [3, 3], [1, 1], 1)),
            ([3, 6, 8, 6], [9, 2, 7, 7], conv([2, 2], [2, 3], [1, 1], 3)),
            ([1, 3, 4, 5], [3, 1, 3, 3], conv([3, 2], [2, 2], [2, 1], 3)),
            ([1, 3, 2, 1], [2, 3, 3, 3], conv([1, 1], [2, 3], [1, 1], 1)),
            ([2, 4, 9, 6], [6, 2, 3, 3], conv([1, 1], [2, 1], [2, 1], 2)),
            ([2, 3, 6, 5], [20, 3, 3, 3], conv([1, 1], [1, 1], [1, 1], 1)),
            // 64 output channels on small planes: the f32 kernels put channels in the lanes.
            ([2, 5, 6, 5], [64, 5, 3, 3], conv([1, 1], [1, 1], [1, 1], 1)),
            (
                [1, 4, 7, 7],
                [128, 2, 3, 3],
                conv([2, 2], [1, 1], [1, 1], 2),
            ),
        ]
    }

    fn random(rng: &mut ChaCha8Rng, n: usize) -> Vec<f64> {
        (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    /// Evaluates `op` on `ins`; the output starts as NaN so an unwritten element shows.
    fn run<T: Real>(op: &OpKind, ins: &[(&[T], Vec<usize>)]) -> (Vec<T>, Vec<usize>) {
        let types: Vec<TensorType> = ins
            .iter()
            .map(|(_, s)| TensorType::f32(s.clone()))
            .collect();
        let args: Vec<(&TensorType, &[T])> =
            types.iter().zip(ins).map(|(t, (v, _))| (t, *v)).collect();
        let mut outs = crate::backend::cpu::eval_once(op, &args, StepCtx::default()).unwrap();
        let shape = op
            .primitive()
            .infer(&types.iter().collect::<Vec<_>>())
            .unwrap()
            .swap_remove(0)
            .shape;
        (outs.swap_remove(0), shape)
    }

    /// The definition, one loop per index: y, and the products dx = ∂⟨y, dy⟩/∂x and
    /// dw = ∂⟨y, dy⟩/∂w for a given dy.
    struct Naive {
        y: Vec<f64>,
        dx: Vec<f64>,
        dw: Vec<f64>,
        y_shape: [usize; 4],
    }

    fn out_shape(xs: [usize; 4], ws: [usize; 4], cv: &Conv2d) -> [usize; 4] {
        let out = |i: usize, k: usize, d: usize| {
            (i + 2 * cv.padding[d] - cv.dilation[d] * (k - 1) - 1) / cv.stride[d] + 1
        };
        [xs[0], ws[0], out(xs[2], ws[2], 0), out(xs[3], ws[3], 1)]
    }

    fn naive(
        x: &[f64],
        xs: [usize; 4],
        w: &[f64],
        ws: [usize; 4],
        cv: &Conv2d,
        dy: &[f64],
    ) -> Naive {
        let [n, c, h, wd] = xs;
        let [o, cg, kh, kw] = ws;
        let og = o / cv.groups;
        let [_, _, oh, ow] = out_shape(xs, ws, cv);
        let mut r = Naive {
            y: vec![0.0; n * o * oh * ow],
            dx: vec![0.0; x.len()],
            dw: vec![0.0; w.len()],
            y_shape: [n, o, oh, ow],
        };
        for b in 0..n {
            for oc in 0..o {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let yi = ((b * o + oc) * oh + oy) * ow + ox;
                        for ci in 0..cg {
                            let ic = (oc / og) * cg + ci;
                            for ki in 0..kh {
                                for kj in 0..kw {
                                    let iy = (oy * cv.stride[0] + ki * cv.dilation[0]) as i64
                                        - cv.padding[0] as i64;
                                    let ix = (ox * cv.stride[1] + kj * cv.dilation[1]) as i64
                                        - cv.padding[1] as i64;
                                    if iy < 0 || ix < 0 || iy >= h as i64 || ix >= wd as i64 {
                                        continue;
                                    }
                                    let xi = ((b * c + ic) * h + iy as usize) * wd + ix as usize;
                                    let wi = ((oc * cg + ci) * kh + ki) * kw + kj;
                                    r.y[yi] += x[xi] * w[wi];
                                    r.dx[xi] += w[wi] * dy[yi];
                                    r.dw[wi] += x[xi] * dy[yi];
                                }
                            }
                        }
                    }
                }
            }
        }
        r
    }

    #[test]
    fn conv_and_its_gradients_match_the_definition() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for (xs, ws, cv) in cases() {
            let x = random(&mut rng, xs.iter().product());
            let w = random(&mut rng, ws.iter().product());
            let dy = random(&mut rng, out_shape(xs, ws, &cv).iter().product());
            let want = naive(&x, xs, &w, ws, &cv, &dy);
            let what = format!("{xs:?} {ws:?} {cv:?}");

            let (y, shape) = run(
                &OpKind::Conv2d(cv.clone()),
                &[(&x, xs.into()), (&w, ws.into())],
            );
            assert_eq!(shape, want.y_shape, "{what}");
            assert_close(&format!("y {what}"), &y, &want.y);

            let gi = OpKind::Conv2dGradInput(Conv2dGradInput {
                conv: cv.clone(),
                input: [xs[2], xs[3]],
            });
            let (dx, shape) = run(&gi, &[(&dy, want.y_shape.into()), (&w, ws.into())]);
            assert_eq!(shape, xs, "{what}");
            assert_close(&format!("dx {what}"), &dx, &want.dx);

            let gw = OpKind::Conv2dGradWeight(Conv2dGradWeight {
                conv: cv.clone(),
                kernel: [ws[2], ws[3]],
            });
            let (dw, shape) = run(&gw, &[(&x, xs.into()), (&dy, want.y_shape.into())]);
            assert_eq!(shape, ws, "{what}");
            assert_close(&format!("dw {what}"), &dw, &want.dw);

            // f32 takes its own kernels (direct.rs) where the CPU has them.
            let f = |v: &[f64]| v.iter().map(|&e| e as f32).collect::<Vec<f32>>();
            let (x, w, dy) = (f(&x), f(&w), f(&dy));
            let ys = want.y_shape.to_vec();
            let runs = [
                (
                    &OpKind::Conv2d(cv.clone()),
                    [(&x, xs.to_vec()), (&w, ws.to_vec())],
                    &want.y,
                ),
                (&gi, [(&dy, ys.clone()), (&w, ws.to_vec())], &want.dx),
                (&gw, [(&x, xs.to_vec()), (&dy, ys)], &want.dw),
            ];
            for (op, ins, want) in runs {
                let ins: Vec<(&[f32], Vec<usize>)> =
                    ins.iter().map(|(v, s)| (&v[..], s.clone())).collect();
                let e = rel_err(&run(op, &ins).0, want);
                assert!(e < 1e-5, "f32 {op:?} {what}: relative error {e}");
            }
        }
    }

    #[test]
    fn conv_gradients_pass_gradcheck() {
        for (seed, (xs, ws, cv)) in cases().into_iter().enumerate() {
            let op = OpKind::Conv2d(cv);
            let both = [Arg::Float(xs.into()), Arg::Float(ws.into())];
            let r = check_op(op.clone(), &both, &[0], seed as u64).unwrap();
            assert!(r.worst < 1e-5 && r.checked > 0, "{op:?}: {r:?}");
            // One input constant: the vjp must skip the other's gradient op.
            for args in [
                [Arg::Float(xs.into()), Arg::Const(ws.into(), -1.0, 1.0)],
                [Arg::Const(xs.into(), -1.0, 1.0), Arg::Float(ws.into())],
            ] {
                let r = check_op(op.clone(), &args, &[0], seed as u64).unwrap();
                assert!(r.worst < 1e-5 && r.checked > 0, "{op:?}: {r:?}");
            }
        }
    }

    /// Worst |a - b| relative to the largest |b|; infinite where `a` is not finite (an output
    /// left unwritten stays NaN, which `f64::max` would skip).
    fn rel_err(a: &[f32], b: &[f64]) -> f64 {
        if a.len() != b.len() || a.iter().any(|v| !v.is_finite()) {
            return f64::INFINITY;
        }
        let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let diff = a
            .iter()
            .zip(b)
            .fold(0.0f64, |m, (x, y)| m.max((*x as f64 - y).abs()));
        diff / scale
    }

    #[test]
    fn f32_agrees_with_f64_on_a_resnet_layer() {
        let (xs, ws) = ([8, 16, 28, 28], [32, 16, 3, 3]);
        let cv = conv([2, 2], [1, 1], [1, 1], 1);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let x = random(&mut rng, xs.iter().product());
        let w = random(&mut rng, ws.iter().product());
        let dy = random(&mut rng, 8 * 32 * 14 * 14);
        let f = |v: &[f64]| v.iter().map(|&e| e as f32).collect::<Vec<f32>>();
        let (x32, w32, dy32) = (f(&x), f(&w), f(&dy));
        let ys = vec![8, 32, 14, 14];
        let ops = [
            (
                OpKind::Conv2d(cv.clone()),
                [(&x, &x32, xs.to_vec()), (&w, &w32, ws.to_vec())],
            ),
            (
                OpKind::Conv2dGradInput(Conv2dGradInput {
                    conv: cv.clone(),
                    input: [28, 28],
                }),
                [(&dy, &dy32, ys.clone()), (&w, &w32, ws.to_vec())],
            ),
            (
                OpKind::Conv2dGradWeight(Conv2dGradWeight {
                    conv: cv.clone(),
                    kernel: [3, 3],
                }),
                [(&x, &x32, xs.to_vec()), (&dy, &dy32, ys.clone())],
            ),
        ];
        for (op, ins) in ops {
            let a: Vec<(&[f64], Vec<usize>)> =
                ins.iter().map(|(v, _, s)| (&v[..], s.clone())).collect();
            let b: Vec<(&[f32], Vec<usize>)> =
                ins.iter().map(|(_, v, s)| (&v[..], s.clone())).collect();
            let (y64, _) = run(&op, &a);
            let (y32, _) = run(&op, &b);
            let e = rel_err(&y32, &y64);
            assert!(e < 1e-5, "{op:?}: relative error {e}");
        }
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        for (xs, ws, cv) in [
            ([37, 6, 9, 7], [4, 3, 3, 3], conv([2, 1], [1, 1], [1, 1], 2)),
            ([37, 6, 9, 7], [4, 3, 3, 3], conv([1, 1], [1, 1], [1, 1], 2)),
            (
                [37, 6, 9, 7],
                [40, 6, 3, 3],
                conv([1, 1], [1, 1], [1, 1], 1),
            ),
        ] {
            same_bits_on_any_thread_count(xs, ws, cv);
        }
    }

    fn same_bits_on_any_thread_count(xs: [usize; 4], ws: [usize; 4], cv: Conv2d) {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let x: Vec<f32> = random(&mut rng, xs.iter().product())
            .iter()
            .map(|&v| v as f32)
            .collect();
        let w: Vec<f32> = random(&mut rng, ws.iter().product())
            .iter()
            .map(|&v| v as f32)
            .collect();
        let ys = out_shape(xs, ws, &cv).to_vec();
        let dy: Vec<f32> = random(&mut rng, ys.iter().product())
            .iter()
            .map(|&v| v as f32)
            .collect();
        let all = || {
            let gi = Conv2dGradInput {
                conv: cv.clone(),
                input: [xs[2], xs[3]],
            };
            let gw = Conv2dGradWeight {
                conv: cv.clone(),
                kernel: [3, 3],
            };
            [
                run(
                    &OpKind::Conv2d(cv.clone()),
                    &[(&x, xs.into()), (&w, ws.into())],
                )
                .0,
                run(
                    &OpKind::Conv2dGradInput(gi),
                    &[(&dy, ys.clone()), (&w, ws.into())],
                )
                .0,
                run(
                    &OpKind::Conv2dGradWeight(gw),
                    &[(&x, xs.into()), (&dy, ys.clone())],
                )
                .0,
            ]
        };
        crate::ops::testing::assert_same_bits_on_any_thread_count(|| all().to_vec());
    }

    #[test]
    fn shape_rules_refuse_what_does_not_fit() {
        let x = TensorType::f32(vec![2, 6, 7, 5]);
        let w = TensorType::f32(vec![4, 3, 3, 3]);
        assert!(conv([1, 1], [0, 0], [1, 1], 2).infer(&[&x, &w]).is_ok());
        assert!(conv([1, 1], [0, 0], [1, 1], 1).infer(&[&x, &w]).is_err());
        assert!(conv([0, 1], [0, 0], [1, 1], 2).infer(&[&x, &w]).is_err());
        assert!(conv([1, 1], [0, 0], [4, 1], 2).infer(&[&x, &w]).is_err());
        let dy = TensorType::f32(vec![2, 4, 5, 3]);
        let gi = |h| Conv2dGradInput {
            conv: conv([1, 1], [0, 0], [1, 1], 2),
            input: [h, 5],
        };
        assert_eq!(gi(7).infer(&[&dy, &w]).unwrap()[0], x);
        assert!(gi(8).infer(&[&dy, &w]).is_err());
        let gw = Conv2dGradWeight {
            conv: conv([1, 1], [0, 0], [1, 1], 2),
            kernel: [3, 3],
        };
        assert_eq!(gw.infer(&[&x, &dy]).unwrap()[0], w);
    }
}
