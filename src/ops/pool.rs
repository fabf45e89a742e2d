//! Max and average pooling over H and W of an NCHW tensor, and their gradient. PyTorch's
//! `F.max_pool2d` / `F.avg_pool2d` with dilation 1, ceil_mode=False and (avg)
//! count_include_pad=True: max pads with -inf and takes the first maximum in window order (a NaN
//! wins, as in PyTorch's CPU kernel); avg divides every window's sum by kh*kw.

use std::ops::Range;

use rayon::prelude::*;
use serde::Serialize;

use super::conv::window_out;
use super::{
    Eval, OpKind, Primitive, ShapeResult, VjpArgs, VjpCx, VjpResult, expect_arity, expect_f32,
};
use crate::kernel::cpu::{Io, Real};
use crate::kernel::gpu::section;
use crate::kernel::gpu::{Bind, Params, per_element};
use crate::kernel::gpu::{Dispatch, KernelArgs};
use crate::tensor::{TensorType, fmt_shape};

/// The pooling kernel `entry` over `total` threads; `x` and `y` are the forward's shapes.
fn pool_kernel(
    pool: &Pool2d,
    entry: &'static str,
    bindings: Vec<Bind>,
    total: usize,
    x: &[usize],
    y: &[usize],
) -> Vec<Dispatch> {
    let params = Params::new()
        .u32(total)
        .u32(x[2])
        .u32(x[3])
        .u32(y[2])
        .u32(y[3])
        .u32(pool.kernel[0])
        .u32(pool.kernel[1])
        .u32(pool.stride[0])
        .u32(pool.stride[1])
        .u32(pool.padding[0])
        .u32(pool.padding[1])
        .u32((pool.kind == PoolKind::Avg) as usize)
        .done();
    let shader = section(include_str!("../../kernels/pool.wgsl"), entry);
    per_element(shader, bindings, params, total)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolKind {
    Max,
    /// Average; padded zeros count in the divisor (PyTorch's count_include_pad=True).
    Avg,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Pool2d {
    pub kind: PoolKind,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
}

impl Primitive for Pool2d {
    fn name(&self) -> &'static str {
        match self.kind {
            PoolKind::Max => "max_pool2d",
            PoolKind::Avg => "avg_pool2d",
        }
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        expect_arity(inputs, 1)?;
        let x = inputs[0];
        expect_f32(x, "the input")?;
        if x.rank() != 4 {
            return Err(format!(
                "expects an image batch [N, C, H, W], got {}",
                fmt_shape(&x.shape)
            ));
        }
        if x.shape[2] == 0 || x.shape[3] == 0 {
            return Err(format!(
                "cannot pool an empty image {}",
                fmt_shape(&x.shape)
            ));
        }
        if self.kernel.contains(&0) || self.stride.contains(&0) {
            return Err(format!(
                "kernel {:?} and stride {:?} must be at least 1",
                self.kernel, self.stride
            ));
        }
        if self.padding[0] * 2 > self.kernel[0] || self.padding[1] * 2 > self.kernel[1] {
            return Err(format!(
                "padding {:?} must be at most half the kernel {:?} (as in PyTorch)",
                self.padding, self.kernel
            ));
        }
        let oh = window_out(
            x.shape[2],
            self.kernel[0],
            self.stride[0],
            self.padding[0],
            1,
        );
        let ow = window_out(
            x.shape[3],
            self.kernel[1],
            self.stride[1],
            self.padding[1],
            1,
        );
        match (oh, ow) {
            (Some(oh), Some(ow)) => Ok(vec![TensorType::f32(vec![x.shape[0], x.shape[1], oh, ow])]),
            _ => Err(format!(
                "a {}x{} window does not fit a {}x{} input",
                self.kernel[0], self.kernel[1], x.shape[2], x.shape[3]
            )),
        }
    }
    fn flops(&self, _: &[&TensorType], out: &[TensorType]) -> u64 {
        (out[0].numel() as u64).saturating_mul((self.kernel[0] * self.kernel[1]) as u64)
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        vec![
            ("kernel", format!("{:?}", self.kernel)),
            ("stride", format!("{:?}", self.stride)),
            ("padding", format!("{:?}", self.padding)),
        ]
    }
    fn vjp(&self, cx: &mut VjpCx, a: &VjpArgs) -> VjpResult {
        let dy = a.dy()?;
        let dx = match a.wants(0) {
            true => Some(cx.op(
                OpKind::Pool2dGrad(Pool2dGrad { pool: self.clone() }),
                &[a.inputs[0], dy],
            )?),
            false => None,
        };
        Ok(vec![dx])
    }
    /// One thread per output element.
    fn gpu(&self, args: &KernelArgs) -> Result<Vec<Dispatch>, String> {
        let (x, y) = (&args.inputs[0].shape, &args.outputs[0].shape);
        let bindings = vec![Bind::In(0), Bind::Out(0)];
        Ok(pool_kernel(
            self,
            "pool_forward",
            bindings,
            args.numel_out(0),
            x,
            y,
        ))
    }
}

/// The gradient of a pooling: inputs x, dy → dx shaped like x. Max routes each dy to its
/// window's maximum (recomputed from x, same tie rule); avg spreads dy / (kh*kw).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Pool2dGrad {
    pub pool: Pool2d,
}

impl Primitive for Pool2dGrad {
    fn name(&self) -> &'static str {
        match self.pool.kind {
            PoolKind::Max => "max_pool2d_grad",
            PoolKind::Avg => "avg_pool2d_grad",
        }
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        expect_arity(inputs, 2)?;
        let y = self.pool.infer(&inputs[..1])?;
        if y[0] != *inputs[1] {
            return Err(format!(
                "dy {} does not match the pooled input's {}",
                fmt_shape(&inputs[1].shape),
                fmt_shape(&y[0].shape)
            ));
        }
        Ok(vec![inputs[0].clone()])
    }
    fn flops(&self, inputs: &[&TensorType], _: &[TensorType]) -> u64 {
        (inputs[1].numel() as u64)
            .saturating_mul((self.pool.kernel[0] * self.pool.kernel[1]) as u64)
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        self.pool.attrs()
    }
    /// One thread per input element, gathering from the windows that hold it.
    fn gpu(&self, args: &KernelArgs) -> Result<Vec<Dispatch>, String> {
        let (x, y) = (&args.inputs[0].shape, &args.inputs[1].shape);
        let bindings = vec![Bind::In(0), Bind::In(1), Bind::Out(0)];
        let total = args.numel_out(0);
        Ok(pool_kernel(
            &self.pool,
            "pool_backward",
            bindings,
            total,
            x,
            y,
        ))
    }
}

/// One plane's pooling windows.
struct Windows {
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    pool: Pool2d,
}

impl Windows {
    fn new(pool: &Pool2d, x: &[usize], y: &[usize]) -> Windows {
        Windows {
            h: x[2],
            w: x[3],
            oh: y[2],
            ow: y[3],
            pool: pool.clone(),
        }
    }
    /// The input rows (d = 0) or columns (d = 1) of output index `o`'s window, clipped to the
    /// input; never empty since the input is not and padding is at most half the kernel.
    fn span(&self, d: usize, o: usize, len: usize) -> Range<usize> {
        let start = (o * self.pool.stride[d]) as isize - self.pool.padding[d] as isize;
        let end = (start + self.pool.kernel[d] as isize).min(len as isize) as usize;
        start.max(0) as usize..end
    }
    fn rows(&self, oy: usize) -> Range<usize> {
        self.span(0, oy, self.h)
    }
    fn cols(&self, ox: usize) -> Range<usize> {
        self.span(1, ox, self.w)
    }
    /// Index in the plane of output `q`'s maximum: the first in window order, or the last NaN
    /// (PyTorch's CPU rule).
    fn argmax<T: Real>(&self, x: &[T], q: usize) -> usize {
        let (rows, cols) = (self.rows(q / self.ow), self.cols(q % self.ow));
        let mut best = rows.start * self.w + cols.start;
        let mut max = T::of(f64::NEG_INFINITY);
        for iy in rows {
            for ix in cols.clone() {
                let v = x[iy * self.w + ix];
                if v > max || v.partial_cmp(&v).is_none() {
                    max = v;
                    best = iy * self.w + ix;
                }
            }
        }
        best
    }
    fn area<T: Real>(&self) -> T {
        T::of((self.pool.kernel[0] * self.pool.kernel[1]) as f64)
    }
}

impl Eval for Pool2d {
    fn eval<T: Real>(&self, io: &mut Io<'_, T>) {
        let win = Windows::new(self, io.in_shape(0), io.out_shape(0));
        let (ins, outs) = io.split::<1>();
        let x = ins.get(0);
        let y = &mut *outs[0];
        let (plane, area) = (win.h * win.w, win.area::<T>());
        if y.is_empty() {
            return;
        }
        y.par_chunks_mut(win.oh * win.ow)
            .enumerate()
            .for_each(|(c, y)| {
                let x = &x[c * plane..][..plane];
                for (q, v) in y.iter_mut().enumerate() {
                    *v = match self.kind {
                        PoolKind::Max => x[win.argmax(x, q)],
                        PoolKind::Avg => {
                            let mut sum = T::ZERO;
                            for iy in win.rows(q / win.ow) {
                                for &e in &x[iy * win.w..][win.cols(q % win.ow)] {
                                    sum += e;
                                }
                            }
                            sum / area
                        }
                    };
                }
            });
    }
}

impl Eval for Pool2dGrad {
    fn eval<T: Real>(&self, io: &mut Io<'_, T>) {
        let win = Windows::new(&self.pool, io.in_shape(0), io.in_shape(1));
        let (ins, outs) = io.split::<1>();
        let (x, dy) = (ins.get(0), ins.get(1));
        let dx = &mut *outs[0];
        let (plane, out_plane, area) = (win.h * win.w, win.oh * win.ow, win.area::<T>());
        if dx.is_empty() {
            return;
        }
        dx.par_chunks_mut(plane).enumerate().for_each(|(c, dx)| {
            dx.fill(T::ZERO);
            let x = &x[c * plane..][..plane];
            let dy = &dy[c * out_plane..][..out_plane];
            for (q, &g) in dy.iter().enumerate() {
                match self.pool.kind {
                    PoolKind::Max => dx[win.argmax(x, q)] += g,
                    PoolKind::Avg => {
                        let g = g / area;
                        for iy in win.rows(q / win.ow) {
                            for d in &mut dx[iy * win.w..][win.cols(q % win.ow)] {
                                *d += g;
                            }
                        }
                    }
                }
            }
        });
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

    fn pool(kind: PoolKind, kernel: [usize; 2], stride: [usize; 2], padding: [usize; 2]) -> Pool2d {
        Pool2d {
            kind,
            kernel,
            stride,
            padding,
        }
    }

    /// x shape, kernel, stride, padding.
    type Case = ([usize; 4], [usize; 2], [usize; 2], [usize; 2]);

    /// Odd sizes, overlapping windows, padding, 1x1 and 7x7 windows.
    fn cases() -> Vec<Case> {
        vec![
            ([1, 3, 7, 5], [2, 2], [2, 2], [0, 0]),
            ([2, 3, 7, 5], [3, 3], [2, 2], [1, 1]),
            ([1, 2, 7, 5], [3, 2], [1, 2], [1, 1]),
            ([2, 3, 9, 7], [5, 3], [3, 2], [2, 0]),
            ([1, 2, 5, 5], [1, 1], [1, 1], [0, 0]),
            ([1, 3, 7, 7], [7, 7], [1, 1], [3, 3]),
        ]
    }

    fn run<T: Real>(op: &OpKind, ins: &[(&[T], Vec<usize>)]) -> Vec<T> {
        let types: Vec<TensorType> = ins
            .iter()
            .map(|(_, s)| TensorType::f32(s.clone()))
            .collect();
        let args: Vec<(&TensorType, &[T])> =
            types.iter().zip(ins).map(|(t, (v, _))| (t, *v)).collect();
        let mut outs = crate::backend::cpu::eval_once(op, &args, StepCtx::default()).unwrap();
        outs.swap_remove(0)
    }

    /// The definition over every window position, padding included: y, dx for a given dy,
    /// and y's shape.
    fn naive(
        x: &[f64],
        xs: [usize; 4],
        p: &Pool2d,
        dy: &[f64],
    ) -> (Vec<f64>, Vec<f64>, Vec<usize>) {
        let [n, c, h, w] = xs;
        let [kh, kw] = p.kernel;
        let oh = (h + 2 * p.padding[0] - kh) / p.stride[0] + 1;
        let ow = (w + 2 * p.padding[1] - kw) / p.stride[1] + 1;
        let mut y = vec![0.0; n * c * oh * ow];
        let mut dx = vec![0.0; x.len()];
        for plane in 0..n * c {
            for oy in 0..oh {
                for ox in 0..ow {
                    let yi = (plane * oh + oy) * ow + ox;
                    let g = dy.get(yi).copied().unwrap_or(0.0);
                    let mut best: Option<(f64, usize)> = None;
                    let mut sum = 0.0;
                    for ki in 0..kh {
                        for kj in 0..kw {
                            let iy = (oy * p.stride[0] + ki) as i64 - p.padding[0] as i64;
                            let ix = (ox * p.stride[1] + kj) as i64 - p.padding[1] as i64;
                            if iy < 0 || ix < 0 || iy >= h as i64 || ix >= w as i64 {
                                continue; // -inf for max, 0 for avg: neither ever wins or adds
                            }
                            let xi = (plane * h + iy as usize) * w + ix as usize;
                            sum += x[xi];
                            if dy.len() == y.len() && p.kind == PoolKind::Avg {
                                dx[xi] += g / (kh * kw) as f64;
                            }
                            if best.is_none_or(|(m, _)| x[xi] > m) {
                                best = Some((x[xi], xi));
                            }
                        }
                    }
                    let (m, at) = best.unwrap();
                    y[yi] = match p.kind {
                        PoolKind::Max => m,
                        PoolKind::Avg => sum / (kh * kw) as f64,
                    };
                    if dy.len() == y.len() && p.kind == PoolKind::Max {
                        dx[at] += g;
                    }
                }
            }
        }
        (y, dx, vec![n, c, oh, ow])
    }

    #[test]
    fn pooling_and_its_gradient_match_the_definition() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        for (xs, k, s, pad) in cases() {
            for kind in [PoolKind::Max, PoolKind::Avg] {
                let p = pool(kind, k, s, pad);
                let x: Vec<f64> = (0..xs.iter().product())
                    .map(|_| rng.random_range(-1.0..1.0))
                    .collect();
                let (_, _, ys) = naive(&x, xs, &p, &[]);
                let dy: Vec<f64> = (0..ys.iter().product())
                    .map(|_| rng.random_range(-1.0..1.0))
                    .collect();
                let (y, dx, _) = naive(&x, xs, &p, &dy);
                let got = run(&OpKind::Pool2d(p.clone()), &[(&x, xs.into())]);
                assert_close(&format!("y {p:?}"), &got, &y);
                let grad = OpKind::Pool2dGrad(Pool2dGrad { pool: p.clone() });
                let got = run(&grad, &[(&x, xs.into()), (&dy, ys)]);
                assert_close(&format!("dx {p:?}"), &got, &dx);
            }
        }
    }

    #[test]
    fn pooling_passes_gradcheck() {
        for (seed, (xs, k, s, pad)) in cases().into_iter().enumerate() {
            for kind in [PoolKind::Max, PoolKind::Avg] {
                let op = OpKind::Pool2d(pool(kind, k, s, pad));
                let r = check_op(op.clone(), &[Arg::Float(xs.into())], &[0], seed as u64).unwrap();
                assert!(r.worst < 1e-5 && r.checked > 0, "{op:?}: {r:?}");
            }
        }
    }

    #[test]
    fn max_takes_the_first_of_tied_maxima_and_propagates_nan() {
        let p = pool(PoolKind::Max, [2, 2], [2, 2], [0, 0]);
        let x = [1.0f64, 3.0, 3.0, 3.0, 0.0, f64::NAN, 2.0, 5.0];
        let xs = vec![2, 1, 2, 2];
        let grad = OpKind::Pool2dGrad(Pool2dGrad { pool: p.clone() });
        let dx = run(
            &grad,
            &[(&x, xs.clone()), (&[10.0, 20.0], vec![2, 1, 1, 1])],
        );
        assert_eq!(dx, vec![0.0, 10.0, 0.0, 0.0, 0.0, 20.0, 0.0, 0.0]);
        let y = run(&OpKind::Pool2d(p), &[(&x, xs)]);
        assert!(y[0] == 3.0 && y[1].is_nan(), "{y:?}");
    }

    #[test]
    fn shape_rules() {
        let x = TensorType::f32(vec![2, 3, 7, 5]);
        let p = pool(PoolKind::Avg, [3, 3], [2, 2], [1, 1]);
        let y = p.infer(&[&x]).unwrap().remove(0);
        assert_eq!(y.shape, vec![2, 3, 4, 3]);
        let g = Pool2dGrad { pool: p.clone() };
        assert_eq!(g.infer(&[&x, &y]).unwrap()[0], x);
        assert!(g.infer(&[&x, &x]).is_err());
        assert!(
            pool(PoolKind::Max, [3, 3], [2, 2], [2, 1])
                .infer(&[&x])
                .is_err()
        );
        assert!(
            pool(PoolKind::Max, [3, 3], [0, 2], [1, 1])
                .infer(&[&x])
                .is_err()
        );
    }
}
