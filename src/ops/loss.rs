//! Losses, reduced to a scalar mean over the batch (PyTorch's reduction="mean"), and their
//! gradients. Sums run in f64 in element order (deterministic).

use rayon::prelude::*;
use serde::Serialize;

use crate::tensor::{DType, TensorType, fmt_shape};

use crate::kernel::gpu::{Dispatch, KernelArgs};

use super::reduce::split_reduction;
use super::{
    Eval, OpKind, Primitive, ShapeResult, VjpArgs, VjpCx, VjpResult, expect_arity, expect_f32,
};
use crate::kernel::cpu::{Io, Real};
use crate::kernel::gpu::{Bind, Params, Shader, WORKGROUP, grid, groups};

/// A kernel of kernels/loss.wgsl.
fn shader(entry: &'static str) -> Shader {
    Shader::reducing(include_str!("../../kernels/loss.wgsl"), entry)
}

/// loss.wgsl's `Params`, in field order.
#[derive(Default)]
struct LossParams {
    rows: usize,
    cols: usize,
    lanes: usize,
    n: usize,
    blocks: usize,
    chunk: usize,
    label_smoothing: f64,
    scale: f64,
    ignore_index: Option<i32>,
}

impl LossParams {
    fn words(&self) -> Vec<u32> {
        let eps = self.label_smoothing;
        let eps_c = if self.cols == 0 {
            0.0
        } else {
            eps / self.cols as f64
        };
        Params::new()
            .u32(self.rows)
            .u32(self.cols)
            .u32(self.lanes)
            .u32(self.n)
            .u32(self.blocks)
            .u32(self.chunk)
            .f32(eps)
            .f32(1.0 - eps)
            .f32(eps_c)
            .f32(self.scale)
            .f32(f64::NAN)
            .u32(usize::from(self.ignore_index.is_some()))
            .f32(self.ignore_index.map_or(0.0, f64::from))
            .done()
    }
}

/// Threads per cross-entropy row: a power of two giving each lane about four classes, so few
/// classes leave room for many rows at once and many classes take the whole workgroup.
fn lanes(cols: usize) -> usize {
    cols.div_ceil(4)
        .next_power_of_two()
        .clamp(1, WORKGROUP as usize)
}

/// Rows and columns of logits [.., classes].
fn rows_cols(logits: &TensorType) -> (usize, usize) {
    let cols = logits.shape.last().copied().unwrap_or(1);
    (logits.numel() / cols.max(1), cols)
}

/// Cross-entropy (`grad`: its gradient) over logits [rows, cols].
fn cross_entropy_kernel(ce: &CrossEntropy, grad: bool, args: &KernelArgs) -> Vec<Dispatch> {
    let (rows, cols) = rows_cols(args.inputs[0]);
    let lanes = lanes(cols);
    let per_round = WORKGROUP as usize / lanes;
    let base = LossParams {
        rows,
        cols,
        lanes,
        label_smoothing: ce.label_smoothing,
        ignore_index: ce.ignore_index,
        ..Default::default()
    };
    if grad {
        // With an ignored label, the counted rows first (one workgroup, fixed order), then the
        // gradient divides by them; without one the count is `rows`, known at plan time.
        let count = Bind::Scratch { at: 0, len: 1 };
        let grad = Dispatch {
            shader: shader("cross_entropy_grad"),
            bindings: vec![Bind::In(0), Bind::In(1), Bind::In(2), Bind::Out(0), count],
            params: base.words(),
            workgroups: groups(rows.div_ceil(per_round)),
        };
        if ce.ignore_index.is_none() {
            return vec![grad];
        }
        let counting = Dispatch {
            shader: shader("counted_rows"),
            bindings: vec![Bind::In(1), count],
            params: base.words(),
            workgroups: [1, 1, 1],
        };
        return vec![counting, grad];
    }
    let (blocks, rounds) = split_reduction(1, rows.div_ceil(per_round));
    let params = LossParams {
        n: rows,
        blocks,
        chunk: rounds * per_round,
        ..base
    };
    let entries = ["cross_entropy", "cross_entropy_total"];
    mean_in_blocks(entries, 2, vec![Bind::In(0), Bind::In(1)], params)
}

/// A loss's mean in two passes (loss.wgsl): `entry` over `inputs` writing each block's `width`
/// partial sums to workspace, then `total` adding them in block order; one block writes the mean
/// itself.
fn mean_in_blocks(
    [entry, total]: [&'static str; 2],
    width: usize,
    mut inputs: Vec<Bind>,
    p: LossParams,
) -> Vec<Dispatch> {
    let blocks = p.blocks;
    let sums = Bind::Scratch {
        at: 0,
        len: blocks * width,
    };
    inputs.push(if blocks > 1 { sums } else { Bind::Out(0) });
    let params = p.words();
    let mut out = vec![Dispatch {
        shader: shader(entry),
        bindings: inputs,
        params: params.clone(),
        workgroups: groups(blocks),
    }];
    if blocks > 1 {
        out.push(Dispatch {
            shader: shader(total),
            bindings: vec![sums, Bind::Out(0)],
            params,
            workgroups: [1, 1, 1],
        });
    }
    out
}

/// PyTorch's `F.cross_entropy(logits, labels, label_smoothing=ε, ignore_index=i)` of logits
/// [.., C] against class ids [..] (i32; every position of a sequence is a row): the mean over
/// counted rows of (1−ε)·(−log p_y) + ε·mean_c(−log p_c). A row whose label is `ignore_index`
/// is not counted (its gradient is 0); any other label outside [0, C) makes the loss NaN.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CrossEntropy {
    pub label_smoothing: f64,
    pub ignore_index: Option<i32>,
}

fn cross_entropy_shapes(logits: &TensorType, labels: &TensorType) -> Result<(), String> {
    expect_f32(logits, "the logits")?;
    if logits.rank() < 2 {
        return Err(format!(
            "expects logits [N, classes] or [N, .., classes], got {}",
            fmt_shape(&logits.shape)
        ));
    }
    let rows = &logits.shape[..logits.rank() - 1];
    if labels.dtype != DType::I32 || labels.shape != rows {
        return Err(format!(
            "expects i32 labels {}, got {}",
            fmt_shape(rows),
            fmt_shape(&labels.shape)
        ));
    }
    Ok(())
}

/// What a row's label asks for.
enum Target {
    Class(usize),
    Ignored,
    Invalid,
}

/// The class a label names; `Ignored` for `ignore`, `Invalid` when it is not an integer in
/// [0, classes).
fn target<T: Real>(label: T, classes: usize, ignore: Option<i32>) -> Target {
    let v = label.to_f64();
    if ignore.is_some_and(|i| f64::from(i) == v) {
        Target::Ignored
    } else if v >= 0.0 && v < classes as f64 && v.fract() == 0.0 {
        Target::Class(v as usize)
    } else {
        Target::Invalid
    }
}

/// Rows whose label is not `ignore` (an f64 sum in row order, as the GPU's exact f32 count).
fn counted_rows<T: Real>(labels: &[T], ignore: Option<i32>) -> f64 {
    let skip = |l: &&T| ignore.is_some_and(|i| f64::from(i) == l.to_f64());
    (labels.len() - labels.iter().filter(skip).count()) as f64
}

/// log Σ exp(row), max-subtracted.
fn log_sum_exp<T: Real>(row: &[T]) -> f64 {
    let m = row.iter().fold(f64::NEG_INFINITY, |m, v| m.max(v.to_f64()));
    m + row.iter().map(|v| (v.to_f64() - m).exp()).sum::<f64>().ln()
}

impl Primitive for CrossEntropy {
    fn name(&self) -> &'static str {
        "cross_entropy"
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        expect_arity(inputs, 2)?;
        cross_entropy_shapes(inputs[0], inputs[1])?;
        Ok(vec![TensorType::f32(vec![])])
    }
    fn flops(&self, inputs: &[&TensorType], _: &[TensorType]) -> u64 {
        6 * inputs[0].numel() as u64
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        ce_attrs(self.label_smoothing, self.ignore_index)
    }
    fn vjp(&self, cx: &mut VjpCx, a: &VjpArgs) -> VjpResult {
        if !a.wants(0) {
            return Ok(vec![None, None]);
        }
        let op = CrossEntropyGrad {
            label_smoothing: self.label_smoothing,
            ignore_index: self.ignore_index,
        };
        let ins = [a.inputs[0], a.inputs[1], a.dy()?];
        Ok(vec![Some(cx.op(OpKind::CrossEntropyGrad(op), &ins)?), None])
    }
    fn gpu(&self, args: &KernelArgs) -> Result<Vec<Dispatch>, String> {
        Ok(cross_entropy_kernel(self, false, args))
    }
}

fn ce_attrs(eps: f64, ignore: Option<i32>) -> Vec<(&'static str, String)> {
    let mut attrs = vec![("label_smoothing", eps.to_string())];
    attrs.extend(ignore.map(|i| ("ignore_index", i.to_string())));
    attrs
}

impl Eval for CrossEntropy {
    fn eval<T: Real>(&self, io: &mut Io<'_, T>) {
        let c = *io.in_shape(0).last().expect("rank >= 2");
        let eps = self.label_smoothing;
        let (ins, outs) = io.split::<1>();
        let (logits, labels) = (ins.get(0), ins.get(1));
        let mut total = 0.0;
        for (row, &label) in logits.chunks(c.max(1)).zip(labels) {
            let y = match target(label, c, self.ignore_index) {
                Target::Class(y) => y,
                Target::Ignored => continue,
                Target::Invalid => {
                    total = f64::NAN;
                    break;
                }
            };
            let lse = log_sum_exp(row);
            let nll = lse - row[y].to_f64();
            let smooth = lse - row.iter().map(|v| v.to_f64()).sum::<f64>() / c as f64;
            total += (1.0 - eps) * nll + eps * smooth;
        }
        outs[0][0] = T::of(total / counted_rows(labels, self.ignore_index));
    }
}

/// The gradient of [`CrossEntropy`]: dlogits = dloss·(softmax − target)/N with target =
/// (1−ε)·onehot(y) + ε/C and N the counted rows. An ignored row gets 0, a row with an invalid
/// label NaN. Inputs: logits, labels, dloss.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CrossEntropyGrad {
    pub label_smoothing: f64,
    pub ignore_index: Option<i32>,
}

impl Primitive for CrossEntropyGrad {
    fn name(&self) -> &'static str {
        "cross_entropy_grad"
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        expect_arity(inputs, 3)?;
        cross_entropy_shapes(inputs[0], inputs[1])?;
        if inputs[2].numel() != 1 {
            return Err("expects a scalar dloss".into());
        }
        Ok(vec![inputs[0].clone()])
    }
    fn flops(&self, inputs: &[&TensorType], _: &[TensorType]) -> u64 {
        5 * inputs[0].numel() as u64
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        ce_attrs(self.label_smoothing, self.ignore_index)
    }
    fn gpu(&self, args: &KernelArgs) -> Result<Vec<Dispatch>, String> {
        let ce = CrossEntropy {
            label_smoothing: self.label_smoothing,
            ignore_index: self.ignore_index,
        };
        Ok(cross_entropy_kernel(&ce, true, args))
    }
}

impl Eval for CrossEntropyGrad {
    fn eval<T: Real>(&self, io: &mut Io<'_, T>) {
        let c = *io.in_shape(0).last().expect("rank >= 2");
        let eps = self.label_smoothing;
        let ignore = self.ignore_index;
        let (ins, outs) = io.split::<1>();
        let (logits, labels) = (ins.get(0), ins.get(1));
        let scale = ins.get(2)[0].to_f64() / counted_rows(labels, ignore);
        if c == 0 {
            return;
        }
        outs[0]
            .par_chunks_mut(c)
            .zip(logits.par_chunks(c))
            .zip(labels.par_iter())
            .for_each(|((dx, row), &label)| {
                let y = match target(label, c, ignore) {
                    Target::Class(y) => y,
                    Target::Ignored => return dx.fill(T::of(0.0)),
                    Target::Invalid => return dx.fill(T::of(f64::NAN)),
                };
                let lse = log_sum_exp(row);
                for (j, (dx, v)) in dx.iter_mut().zip(row).enumerate() {
                    let target = eps / c as f64 + if j == y { 1.0 - eps } else { 0.0 };
                    *dx = T::of(scale * ((v.to_f64() - lse).exp() - target));
                }
            });
    }
}

/// PyTorch's `F.mse_loss(pred, target)`: mean of (pred − target)² over every element.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Mse;

fn same_shapes(inputs: &[&TensorType]) -> Result<(), String> {
    expect_f32(inputs[0], "the prediction")?;
    expect_f32(inputs[1], "the target")?;
    if inputs[0].shape != inputs[1].shape {
        return Err(format!(
            "prediction {} and target {} differ",
            fmt_shape(&inputs[0].shape),
            fmt_shape(&inputs[1].shape)
        ));
    }
    Ok(())
}

impl Primitive for Mse {
    fn name(&self) -> &'static str {
        "mse"
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        expect_arity(inputs, 2)?;
        same_shapes(inputs)?;
        Ok(vec![TensorType::f32(vec![])])
    }
    fn flops(&self, inputs: &[&TensorType], _: &[TensorType]) -> u64 {
        3 * inputs[0].numel() as u64
    }
    fn vjp(&self, cx: &mut VjpCx, a: &VjpArgs) -> VjpResult {
        let (pred, target, dy) = (a.inputs[0], a.inputs[1], a.dy()?);
        let dpred = match a.wants(0) {
            true => Some(cx.op(OpKind::MseGrad(MseGrad), &[pred, target, dy])?),
            false => None,
        };
        // The target's gradient is −dpred: the same op with the roles swapped.
        let dtarget = match a.wants(1) {
            true => Some(cx.op(OpKind::MseGrad(MseGrad), &[target, pred, dy])?),
            false => None,
        };
        Ok(vec![dpred, dtarget])
    }
    fn gpu(&self, args: &KernelArgs) -> Result<Vec<Dispatch>, String> {
        let n = args.numel_in(0);
        let (blocks, rounds) = split_reduction(1, n.div_ceil(WORKGROUP as usize));
        let params = LossParams {
            lanes: 1,
            n,
            blocks,
            chunk: rounds * WORKGROUP as usize,
            ..Default::default()
        };
        Ok(mean_in_blocks(
            ["mse", "loss_total"],
            1,
            vec![Bind::In(0), Bind::In(1)],
            params,
        ))
    }
}

impl Eval for Mse {
    fn eval<T: Real>(&self, io: &mut Io<'_, T>) {
        let (ins, outs) = io.split::<1>();
        let (p, t) = (ins.get(0), ins.get(1));
        let sum: f64 = p
            .iter()
            .zip(t)
            .map(|(p, t)| (p.to_f64() - t.to_f64()).powi(2))
            .sum();
        outs[0][0] = T::of(sum / p.len() as f64);
    }
}

/// The gradient of [`Mse`] with respect to its first input: dpred = 2·(pred − target)·dloss /
/// numel. Inputs: pred, target, dloss (scalar).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MseGrad;

impl Primitive for MseGrad {
    fn name(&self) -> &'static str {
        "mse_grad"
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        expect_arity(inputs, 3)?;
        same_shapes(inputs)?;
        if inputs[2].numel() != 1 {
            return Err("expects a scalar dloss".into());
        }
        Ok(vec![inputs[0].clone()])
    }
    fn flops(&self, inputs: &[&TensorType], _: &[TensorType]) -> u64 {
        3 * inputs[0].numel() as u64
    }
    fn inplace(&self) -> Option<usize> {
        Some(0)
    }
    fn gpu(&self, args: &KernelArgs) -> Result<Vec<Dispatch>, String> {
        let n = args.numel_out(0);
        let params = LossParams {
            lanes: 1,
            n,
            scale: 2.0 / n as f64,
            ..Default::default()
        };
        Ok(vec![Dispatch {
            shader: shader("mse_grad"),
            bindings: vec![Bind::In(0), Bind::In(1), Bind::In(2), Bind::Out(0)],
            params: params.words(),
            workgroups: grid(n),
        }])
    }
}

impl Eval for MseGrad {
    fn eval<T: Real>(&self, io: &mut Io<'_, T>) {
        let scale = T::of(2.0 / io.out_types[0].numel() as f64);
        io.map(|[p, t, d]| [scale * (p - t) * d]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{Arg, check_op};
    use crate::ops::reduce::tests::{assert_close, eval_f64, f32_input};

    fn ce(label_smoothing: f64) -> OpKind {
        OpKind::CrossEntropy(CrossEntropy {
            label_smoothing,
            ignore_index: None,
        })
    }

    fn labels(v: Vec<f64>) -> (TensorType, Vec<f64>) {
        let ty = TensorType {
            shape: vec![v.len()],
            dtype: DType::I32,
        };
        (ty, v)
    }

    #[test]
    fn cross_entropy_of_known_logits() {
        let logits = (TensorType::f32(vec![1, 3]), vec![1.0, 2.0, 3.0]);
        let ins = [logits, labels(vec![2.0])];
        let got = eval_f64(&ce(0.0), &ins)[0][0];
        assert!((got - 0.40760596).abs() < 1e-8, "{got}");
        // lse − 0.9·x_y − 0.1·mean(x) = 3.40760596 − 2.7 − 0.2.
        let got = eval_f64(&ce(0.1), &ins)[0][0];
        assert!((got - 0.50760596).abs() < 1e-8, "{got}");
    }

    #[test]
    fn cross_entropy_matches_the_formula() {
        let (n, c) = (4, 5);
        let x = f32_input(&[n, c], 30);
        let y = vec![0.0, 4.0, 2.0, 2.0];
        for eps in [0.0, 0.1, 0.3] {
            let mut want = 0.0;
            for i in 0..n {
                let row = &x.1[i * c..(i + 1) * c];
                let z: f64 = row.iter().map(|v| v.exp()).sum();
                let logp: Vec<f64> = row.iter().map(|v| (v.exp() / z).ln()).collect();
                let mean_logp = logp.iter().sum::<f64>() / c as f64;
                want += ((1.0 - eps) * -logp[y[i] as usize] - eps * mean_logp) / n as f64;
            }
            let got = eval_f64(&ce(eps), &[x.clone(), labels(y.clone())]);
            assert_close(&got[0], &[want], 1e-12);
        }
        // Stable for large logits.
        let big = (TensorType::f32(vec![1, 3]), vec![1000.0, 0.0, -1000.0]);
        let got = eval_f64(&ce(0.0), &[big, labels(vec![0.0])]);
        assert!(got[0][0].abs() < 1e-12, "{:?}", got[0]);
    }

    #[test]
    fn cross_entropy_with_a_bad_label_is_nan() {
        let x = f32_input(&[3, 5], 31);
        for bad in [5.0, -1.0, 1e9, 0.5] {
            let y = labels(vec![1.0, bad, 0.0]);
            let loss = eval_f64(&ce(0.1), &[x.clone(), y.clone()]);
            assert!(loss[0][0].is_nan());
            let dloss = (TensorType::f32(vec![]), vec![1.0]);
            let grad = CrossEntropyGrad {
                label_smoothing: 0.1,
                ignore_index: None,
            };
            let dx = eval_f64(&OpKind::CrossEntropyGrad(grad), &[x.clone(), y, dloss]);
            assert!(dx[0][5..10].iter().all(|v| v.is_nan()));
            assert!(dx[0][..5].iter().chain(&dx[0][10..]).all(|v| v.is_finite()));
        }
    }

    /// PyTorch's ignore_index: the loss of a sequence with ignored positions is the loss of
    /// the other positions alone, their gradient rows the same, the ignored rows' zero.
    #[test]
    fn ignored_positions_leave_the_loss_and_its_mean() {
        let x = f32_input(&[2, 3, 5], 32);
        let y = [4.0, -100.0, 1.0, -100.0, 0.0, 3.0];
        let kept = [0, 2, 4, 5];
        let ignoring = |grad: bool| -> OpKind {
            match grad {
                false => OpKind::CrossEntropy(CrossEntropy {
                    label_smoothing: 0.2,
                    ignore_index: Some(-100),
                }),
                true => OpKind::CrossEntropyGrad(CrossEntropyGrad {
                    label_smoothing: 0.2,
                    ignore_index: Some(-100),
                }),
            }
        };
        let seq_labels = (
            TensorType {
                shape: vec![2, 3],
                dtype: DType::I32,
            },
            y.to_vec(),
        );
        let rows: Vec<f64> = kept
            .iter()
            .flat_map(|&r| x.1[r * 5..][..5].to_vec())
            .collect();
        let kept_x = (TensorType::f32(vec![4, 5]), rows);
        let kept_y = labels(kept.iter().map(|&r| y[r]).collect());
        let dloss = (TensorType::f32(vec![]), vec![1.5]);
        let got = eval_f64(&ignoring(false), &[x.clone(), seq_labels.clone()]);
        let want = eval_f64(&ce(0.2), &[kept_x.clone(), kept_y.clone()]);
        assert_close(&got[0], &want[0], 1e-12);
        let dx = eval_f64(&ignoring(true), &[x, seq_labels, dloss.clone()]);
        let grad = OpKind::CrossEntropyGrad(CrossEntropyGrad {
            label_smoothing: 0.2,
            ignore_index: None,
        });
        let want = eval_f64(&grad, &[kept_x, kept_y, dloss]);
        for (k, &r) in kept.iter().enumerate() {
            assert_close(&dx[0][r * 5..][..5], &want[0][k * 5..][..5], 1e-12);
        }
        assert!(dx[0][5..10].iter().chain(&dx[0][15..20]).all(|&v| v == 0.0));
    }

    fn gradcheck(op: OpKind, args: &[Arg]) {
        for seed in 0..3 {
            let r = check_op(op.clone(), args, &[0], seed).unwrap();
            assert!(r.worst < 1e-5, "{op:?} seed {seed}: {r:?}");
            assert!(r.checked > 0);
        }
    }

    #[test]
    fn cross_entropy_gradient() {
        for eps in [0.0, 0.2] {
            for (n, c) in [(1, 5), (4, 7), (3, 3)] {
                gradcheck(ce(eps), &[Arg::Float(vec![n, c]), Arg::Ids(vec![n], c)]);
            }
        }
    }

    #[test]
    fn mse_matches_the_formula() {
        let (p, t) = (f32_input(&[3, 7, 5], 32), f32_input(&[3, 7, 5], 33));
        let want =
            p.1.iter()
                .zip(&t.1)
                .map(|(a, b)| (a - b).powi(2))
                .sum::<f64>()
                / 105.0;
        let got = eval_f64(&OpKind::Mse(Mse), &[p, t]);
        assert_close(&got[0], &[want], 1e-12);
    }

    #[test]
    fn mse_gradient() {
        gradcheck(
            OpKind::Mse(Mse),
            &[Arg::Float(vec![3, 7, 5]), Arg::Float(vec![3, 7, 5])],
        );
        gradcheck(
            OpKind::Mse(Mse),
            &[Arg::Float(vec![1, 3]), Arg::Const(vec![1, 3], -1.0, 1.0)],
        );
    }
}
