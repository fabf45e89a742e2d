//! Optimizer updates as graph ops: gradient-norm clipping, SGD, Adam/AdamW and a counter, each
//! following PyTorch's single-tensor implementation (torch.optim.*, `foreach=False`) in its order
//! of operations, so f32 results match PyTorch's up to rounding. The learning rate and step
//! count are runtime scalars (`io.ctx`), not attributes. None of these ops has a gradient.

use serde::Serialize;

use crate::tensor::{DType, TensorType, fmt_shape};

use crate::kernel::gpu::{Dispatch, KernelArgs};

use super::{Eval, Primitive, ShapeResult, expect_arity, expect_f32};
use crate::kernel::cpu::{Io, Real};
use crate::kernel::gpu::{Bind, Params, Shader, WORKGROUP, grid, groups, multi, with_tree};

const KERNELS: &str = include_str!("../../kernels/optim.wgsl");
const MULTI_KERNELS: &str = include_str!("../../kernels/optim_multi.wgsl");

/// optim.wgsl's `Params`, in field order (fields an entry does not use stay 0).
#[derive(Default)]
struct OptimParams {
    n: usize,
    flags: u32,
    max_norm: f64,
    momentum: f64,
    damp: f64,
    weight_decay: f64,
    w1: f64,
    beta2: f64,
    c2: f64,
    eps: f64,
    ln_beta1: f64,
    ln_beta2: f64,
    chunk: usize,
    base: usize,
    sizes: [usize; 8],
}

const FLAG_NESTEROV: u32 = 1;
const FLAG_DECAY: u32 = 2;
const FLAG_DECOUPLED: u32 = 4;

/// Gradients one grad_norm dispatch sums (eight storage bindings, one for the workspace).
const GRADS_PER_DISPATCH: usize = 7;
/// Elements of a gradient one grad_norm workgroup sums: 8 per thread, a fixed size so the
/// blocks depend on the shapes only.
const GRAD_NORM_CHUNK: usize = 8 * WORKGROUP as usize;

impl OptimParams {
    fn words(&self) -> Vec<u32> {
        let mut p = Params::new()
            .u32(self.n)
            .u32(self.flags as usize)
            .f32(self.max_norm)
            .f32(self.momentum)
            .f32(self.damp)
            .f32(self.weight_decay)
            .f32(self.w1)
            .f32(self.beta2)
            .f32(self.c2)
            .f32(self.eps)
            .f32(self.ln_beta1)
            .f32(self.ln_beta2)
            .u32(self.chunk)
            .u32(self.base)
            .u32(0)
            .u32(0);
        for &s in &self.sizes {
            p = p.u32(s);
        }
        p.done()
    }
}

/// An update over every element of the parameter: inputs then outputs, bound in order.
fn update(entry: &'static str, params: OptimParams, args: &KernelArgs) -> Vec<Dispatch> {
    let mut bindings: Vec<Bind> = (0..args.inputs.len()).map(Bind::In).collect();
    bindings.extend((0..args.outputs.len()).map(Bind::Out));
    vec![Dispatch {
        shader: Shader::reducing(KERNELS, entry),
        bindings,
        workgroups: grid(params.n),
        params: params.words(),
    }]
}

/// The multi-tensor form of an update entry (kernels/optim_multi.wgsl) over `members`
/// instances, inputs then outputs member after member in `args` (kernel/gpu/multi.rs).
fn update_multi(
    entry: &'static str,
    params: OptimParams,
    members: usize,
    args: &KernelArgs,
) -> Result<Vec<Dispatch>, String> {
    let shader = Shader {
        source: multi::source(&with_tree(&format!("{KERNELS}\n{MULTI_KERNELS}"))).into(),
        entry,
    };
    multi::dispatches(&shader, &params.words(), members, args)
}

/// The coefficient torch.nn.utils.clip_grad_norm_(grads, max_norm) multiplies every gradient
/// by: `min(1, max_norm / (total_norm + 1e-6))` with `total_norm = sqrt(Σ g²)` over every
/// input, summed sequentially in input order (in f64). A non-finite norm gives NaN or 0, as
/// in PyTorch (error_if_nonfinite=False). Inputs: the gradients (≥ 1); output: a scalar.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GradNormCoef {
    pub max_norm: f64,
}

impl Primitive for GradNormCoef {
    fn name(&self) -> &'static str {
        "grad_norm_coef"
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        if inputs.is_empty() {
            return Err("takes at least one gradient".into());
        }
        for g in inputs {
            expect_f32(g, "a gradient")?;
        }
        Ok(vec![TensorType::f32(vec![])])
    }
    fn flops(&self, inputs: &[&TensorType], _: &[TensorType]) -> u64 {
        inputs.iter().map(|g| 2 * g.numel() as u64).sum()
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        vec![("max_norm", self.max_norm.to_string())]
    }
    /// Blocks of every gradient, a workgroup each, write their Σ g² to workspace (a dispatch per
    /// seven gradients, in input order); then one workgroup adds them in block order and turns
    /// the total into the coefficient.
    fn gpu(&self, args: &KernelArgs) -> Result<Vec<Dispatch>, String> {
        let blocks = |g: &TensorType| g.numel().div_ceil(GRAD_NORM_CHUNK).max(1);
        let total: usize = args.inputs.iter().map(|g| blocks(g)).sum();
        let sums = Bind::Scratch { at: 0, len: total };
        let mut out = Vec::new();
        let (mut first_input, mut base) = (0, 0);
        for grads in args.inputs.chunks(GRADS_PER_DISPATCH) {
            let mut sizes = [0; 8];
            let mut cases = String::new();
            for (k, g) in grads.iter().enumerate() {
                sizes[k] = g.numel();
                // Each thread sums a fixed strided range of the block: the same order every run.
                cases += &format!(
                    "case {k}u: {{ for (var j = start + lid; j < end; j = j + WORKGROUP) {{ let v = b{}[j]; s = s + v * v; }} }}\n        ",
                    k + 1
                );
            }
            let n: usize = grads.iter().map(|g| blocks(g)).sum();
            let params = OptimParams {
                n,
                max_norm: self.max_norm,
                chunk: GRAD_NORM_CHUNK,
                base,
                sizes,
                ..Default::default()
            };
            let mut bindings = vec![sums];
            bindings.extend((first_input..first_input + grads.len()).map(Bind::In));
            first_input += grads.len();
            base += n;
            let switch = format!("switch k {{\n        {cases}default: {{}}\n    }}");
            out.push(Dispatch {
                shader: Shader {
                    source: with_tree(&KERNELS.replace("//SUMS", &switch)).into(),
                    entry: "grad_norm",
                },
                bindings,
                params: params.words(),
                workgroups: groups(n),
            });
        }
        let params = OptimParams {
            n: total,
            max_norm: self.max_norm,
            ..Default::default()
        };
        out.push(Dispatch {
            shader: Shader::reducing(KERNELS, "grad_norm_total"),
            bindings: vec![sums, Bind::Out(0)],
            params: params.words(),
            workgroups: [1, 1, 1],
        });
        Ok(out)
    }
}

impl Eval for GradNormCoef {
    fn eval<T: Real>(&self, io: &mut Io<'_, T>) {
        let (ins, outs) = io.split::<1>();
        let mut sq = 0.0f64;
        for g in ins.iter() {
            for &v in g.iter() {
                let v = v.to_f64();
                sq += v * v;
            }
        }
        let c = self.max_norm / (sq.sqrt() + 1e-6);
        // torch.clamp(c, max=1.0) keeps a NaN.
        outs[0][0] = T::of(if c >= 1.0 { 1.0 } else { c });
    }
}

/// One torch.optim.SGD step for one parameter. Inputs: p, g, [momentum_buffer if momentum ≠ 0],
/// [clip coefficient (scalar) if clip]; outputs: p', [buf']. With lr and t from the step:
/// `g ← g·coef; g ← g + wd·p; buf ← g if t = 1 else momentum·buf + (1 − dampening)·g;
/// g ← g + momentum·buf if nesterov else buf; p ← p − lr·g`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SgdStep {
    pub momentum: f64,
    pub dampening: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
    pub clip: bool,
}

impl SgdStep {
    fn has_buf(&self) -> bool {
        self.momentum != 0.0
    }
}

/// Checks p, g and the optimizer state (same type as p) and the optional clip coefficient.
fn check_update(inputs: &[&TensorType], states: usize, clip: bool) -> Result<(), String> {
    expect_arity(inputs, 2 + states + clip as usize)?;
    let p = inputs[0];
    expect_f32(p, "the parameter")?;
    for (k, t) in inputs[1..2 + states].iter().enumerate() {
        if *t != p {
            let what = if k == 0 { "the gradient" } else { "a state" };
            return Err(format!(
                "{what} {} differs from the parameter {}",
                fmt_shape(&t.shape),
                fmt_shape(&p.shape)
            ));
        }
    }
    if clip {
        let c = inputs[2 + states];
        expect_f32(c, "the clip coefficient")?;
        if c.numel() != 1 {
            return Err(format!(
                "the clip coefficient must be a scalar, got {}",
                fmt_shape(&c.shape)
            ));
        }
    }
    Ok(())
}

impl Primitive for SgdStep {
    fn name(&self) -> &'static str {
        "sgd_step"
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        let states = self.has_buf() as usize;
        check_update(inputs, states, self.clip)?;
        Ok(vec![inputs[0].clone(); 1 + states])
    }
    fn flops(&self, inputs: &[&TensorType], _: &[TensorType]) -> u64 {
        6 * inputs[0].numel() as u64
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        vec![
            ("momentum", self.momentum.to_string()),
            ("dampening", self.dampening.to_string()),
            ("nesterov", self.nesterov.to_string()),
            ("weight_decay", self.weight_decay.to_string()),
            ("clip", self.clip.to_string()),
        ]
    }
    fn inplace(&self) -> Option<usize> {
        Some(0)
    }
    fn gpu(&self, args: &KernelArgs) -> Result<Vec<Dispatch>, String> {
        let (entry, _) = self.entries();
        let params = OptimParams {
            n: args.numel_in(0),
            ..self.params()
        };
        Ok(update(entry, params, args))
    }
    fn foreach(&self) -> Option<&'static str> {
        Some("sgd_step_multi")
    }
    fn gpu_foreach(&self, members: usize, args: &KernelArgs) -> Result<Vec<Dispatch>, String> {
        update_multi(self.entries().1, self.params(), members, args)
    }
}

impl SgdStep {
    /// The single-tensor entry and its multi-tensor form (optim_multi.wgsl).
    fn entries(&self) -> (&'static str, &'static str) {
        match (self.has_buf(), self.clip) {
            (false, false) => ("sgd", "sgd_multi"),
            (false, true) => ("sgd_clip", "sgd_clip_multi"),
            (true, false) => ("sgd_momentum", "sgd_momentum_multi"),
            (true, true) => ("sgd_momentum_clip", "sgd_momentum_clip_multi"),
        }
    }
    fn params(&self) -> OptimParams {
        let mut flags = 0;
        if self.nesterov {
            flags |= FLAG_NESTEROV;
        }
        if self.weight_decay != 0.0 {
            flags |= FLAG_DECAY;
        }
        OptimParams {
            flags,
            momentum: self.momentum,
            damp: 1.0 - self.dampening,
            weight_decay: self.weight_decay,
            ..Default::default()
        }
    }
}

impl Eval for SgdStep {
    fn eval<T: Real>(&self, io: &mut Io<'_, T>) {
        // Python floats become the tensor's type when they reach a kernel.
        let lr = T::of(io.ctx.lr);
        let first = io.ctx.step == 1;
        let (wd, decay) = (T::of(self.weight_decay), self.weight_decay != 0.0);
        let (mom, damp) = (T::of(self.momentum), T::of(1.0 - self.dampening));
        let nesterov = self.nesterov;
        let grad = |p: T, g: T, coef: T| {
            let g = if self.clip { g * coef } else { g };
            if decay { g + wd * p } else { g }
        };
        // grad.add(buf, alpha=momentum) or buf itself, then param.add_(grad, alpha=-lr).
        let step = |p: T, g: T, buf: T| {
            let g = if nesterov { g + mom * buf } else { buf };
            p + -lr * g
        };
        let momentum = |g: T, buf: T| if first { g } else { buf * mom + damp * g };
        match (self.has_buf(), self.clip) {
            (false, false) => io.map(|[p, g]| [p + -lr * grad(p, g, T::ONE)]),
            (false, true) => io.map(|[p, g, c]| [p + -lr * grad(p, g, c)]),
            (true, false) => io.map(|[p, g, buf]| {
                let g = grad(p, g, T::ONE);
                let buf = momentum(g, buf);
                [step(p, g, buf), buf]
            }),
            (true, true) => io.map(|[p, g, buf, c]| {
                let g = grad(p, g, c);
                let buf = momentum(g, buf);
                [step(p, g, buf), buf]
            }),
        }
    }
}

/// One torch.optim.Adam step (`decoupled`: torch.optim.AdamW) for one parameter, amsgrad off.
/// Inputs: p, g, exp_avg, exp_avg_sq, [clip coefficient if clip]; outputs: p', m', v'.
/// With lr and t from the step, in PyTorch's order:
/// `g ← g·coef; Adam: g ← g + wd·p | AdamW: p ← p·(1 − lr·wd); m ← lerp(m, g, 1 − β1);
/// v ← v·β2 + (1 − β2)·g·g; denom = sqrt(v)/sqrt(1 − β2^t) + eps;
/// p ← p − (lr/(1 − β1^t))·m/denom`, the scalar factors computed in f64 as Python does.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AdamStep {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub decoupled: bool,
    pub clip: bool,
}

impl Primitive for AdamStep {
    fn name(&self) -> &'static str {
        if self.decoupled {
            "adamw_step"
        } else {
            "adam_step"
        }
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        check_update(inputs, 2, self.clip)?;
        Ok(vec![inputs[0].clone(); 3])
    }
    fn flops(&self, inputs: &[&TensorType], _: &[TensorType]) -> u64 {
        14 * inputs[0].numel() as u64
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        vec![
            ("beta1", self.beta1.to_string()),
            ("beta2", self.beta2.to_string()),
            ("eps", self.eps.to_string()),
            ("weight_decay", self.weight_decay.to_string()),
            ("clip", self.clip.to_string()),
        ]
    }
    fn inplace(&self) -> Option<usize> {
        Some(0)
    }
    fn gpu(&self, args: &KernelArgs) -> Result<Vec<Dispatch>, String> {
        let params = OptimParams {
            n: args.numel_in(0),
            ..self.params()
        };
        let entry = if self.clip { "adam_clip" } else { "adam" };
        Ok(update(entry, params, args))
    }
    fn foreach(&self) -> Option<&'static str> {
        Some(if self.decoupled {
            "adamw_step_multi"
        } else {
            "adam_step_multi"
        })
    }
    fn gpu_foreach(&self, members: usize, args: &KernelArgs) -> Result<Vec<Dispatch>, String> {
        let entry = if self.clip {
            "adam_clip_multi"
        } else {
            "adam_multi"
        };
        update_multi(entry, self.params(), members, args)
    }
}

impl AdamStep {
    fn params(&self) -> OptimParams {
        let wd = self.weight_decay;
        let mut flags = 0;
        if wd != 0.0 {
            flags |= if self.decoupled {
                FLAG_DECOUPLED
            } else {
                FLAG_DECAY
            };
        }
        // The bias corrections 1 − β^t depend on the runtime step: the kernel computes them
        // from ln β (in f64 here) without cancellation.
        OptimParams {
            flags,
            weight_decay: wd,
            w1: 1.0 - self.beta1,
            beta2: self.beta2,
            c2: 1.0 - self.beta2,
            eps: self.eps,
            ln_beta1: self.beta1.ln(),
            ln_beta2: self.beta2.ln(),
            ..Default::default()
        }
    }
}

/// ATen's `lerp(a, b, w)`: `a + w·(b − a)` for |w| < 0.5, else `b − (b − a)·(1 − w)`.
fn lerp<T: Real>(a: T, b: T, w: T) -> T {
    if w.abs() < T::of(0.5) {
        a + w * (b - a)
    } else {
        b - (b - a) * (T::ONE - w)
    }
}

impl Eval for AdamStep {
    fn eval<T: Real>(&self, io: &mut Io<'_, T>) {
        let (lr, t) = (io.ctx.lr, io.ctx.step as f64);
        let wd = self.weight_decay;
        let (coupled, decoupled) = (wd != 0.0 && !self.decoupled, wd != 0.0 && self.decoupled);
        let (wd_t, shrink) = (T::of(wd), T::of(1.0 - lr * wd));
        let (w1, b2, c2) = (
            T::of(1.0 - self.beta1),
            T::of(self.beta2),
            T::of(1.0 - self.beta2),
        );
        let bias_correction1 = 1.0 - self.beta1.powf(t);
        let bias_correction2 = 1.0 - self.beta2.powf(t);
        let neg_step_size = T::of(-(lr / bias_correction1));
        let (bc2_sqrt, eps) = (T::of(bias_correction2.sqrt()), T::of(self.eps));
        let update = |p: T, g: T, m: T, v: T, coef: T| {
            let g = if self.clip { g * coef } else { g };
            let g = if coupled { g + wd_t * p } else { g };
            let p = if decoupled { p * shrink } else { p };
            let m = lerp(m, g, w1);
            let v = v * b2 + c2 * g * g;
            let denom = v.sqrt() / bc2_sqrt + eps;
            // param.addcdiv_(exp_avg, denom, value=-step_size): ATen's p + value·m / denom.
            [p + neg_step_size * m / denom, m, v]
        };
        if self.clip {
            io.map(|[p, g, m, v, c]| update(p, g, m, v, c));
        } else {
            io.map(|[p, g, m, v]| update(p, g, m, v, T::ONE));
        }
    }
}

/// `n + 1` on an i32 scalar: batchnorm's num_batches_tracked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CountUp;

impl Primitive for CountUp {
    fn name(&self) -> &'static str {
        "count_up"
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        expect_arity(inputs, 1)?;
        let n = inputs[0];
        if n.dtype != DType::I32 || n.numel() != 1 {
            return Err(format!(
                "expects an i32 scalar, got {} {}",
                n.dtype.name(),
                fmt_shape(&n.shape)
            ));
        }
        Ok(vec![n.clone()])
    }
    fn flops(&self, _: &[&TensorType], _: &[TensorType]) -> u64 {
        1
    }
    fn inplace(&self) -> Option<usize> {
        Some(0)
    }
    fn gpu(&self, _: &KernelArgs) -> Result<Vec<Dispatch>, String> {
        Ok(vec![Dispatch {
            shader: Shader::reducing(KERNELS, "count_up"),
            bindings: vec![Bind::In(0), Bind::Out(0)],
            params: OptimParams::default().words(),
            workgroups: [1, 1, 1],
        }])
    }
    fn foreach(&self) -> Option<&'static str> {
        Some("count_up_multi")
    }
    fn gpu_foreach(&self, members: usize, args: &KernelArgs) -> Result<Vec<Dispatch>, String> {
        update_multi("count_up_multi", OptimParams::default(), members, args)
    }
}

impl Eval for CountUp {
    fn eval<T: Real>(&self, io: &mut Io<'_, T>) {
        io.map(|[n]| [n + T::ONE]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::OpKind;
    use crate::tensor::StepCtx;

    /// Evaluates `op` once at (lr, step); outputs start as garbage so an unwritten one shows.
    fn run<T: Real>(op: &OpKind, ins: &[&[T]], lr: f64, step: u64) -> Vec<Vec<T>> {
        let types: Vec<TensorType> = ins
            .iter()
            .map(|v| match v.len() {
                1 => TensorType::f32(vec![]),
                n => TensorType::f32(vec![n]),
            })
            .collect();
        let type_refs: Vec<&TensorType> = types.iter().collect();
        let out_types = op.primitive().infer(&type_refs).unwrap();
        let mut outs: Vec<Vec<T>> = out_types
            .iter()
            .map(|t| vec![T::of(777.0); t.numel()])
            .collect();
        let ctx = StepCtx { lr, step, seed: 0 };
        let bufs = outs.iter_mut().map(|v| v.as_mut_slice()).collect();
        let mut io = Io::new(ins.to_vec(), bufs, type_refs, &out_types, ctx);
        op.eval(&mut io);
        outs
    }

    fn assert_near(got: &[f64], want: &[f64]) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!(
                (g - w).abs() <= 1e-12 * w.abs().max(1.0),
                "{got:?} != {want:?}"
            );
        }
    }

    fn sgd(momentum: f64, dampening: f64, nesterov: bool, weight_decay: f64) -> OpKind {
        OpKind::SgdStep(SgdStep {
            momentum,
            dampening,
            nesterov,
            weight_decay,
            clip: false,
        })
    }

    fn adam(weight_decay: f64, decoupled: bool, clip: bool) -> OpKind {
        OpKind::AdamStep(AdamStep {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            decoupled,
            clip,
        })
    }

    #[test]
    fn sgd_with_weight_decay_no_momentum() {
        // p − 0.1·(g + 0.01·p) = [1 − 0.1·0.51, −2 − 0.1·0.23].
        let out = run(
            &sgd(0.0, 0.0, false, 0.01),
            &[&[1.0, -2.0], &[0.5, 0.25]],
            0.1,
            1,
        );
        assert_eq!(out.len(), 1);
        assert_near(&out[0], &[0.949, -2.023]);
    }

    #[test]
    fn sgd_momentum_dampening_weight_decay() {
        // lr 0.1, momentum 0.9, dampening 0.1, wd 0.01.
        let op = sgd(0.9, 0.1, false, 0.01);
        let g = [[0.5, 0.25], [0.5, 0.25], [-1.0, 2.0]];
        // t=1: g' = [0.51, 0.23] becomes the buffer (no dampening on the first step);
        // p = [1 − 0.051, −2 − 0.023].
        let s1 = run(&op, &[&[1.0, -2.0], &g[0], &[9.0, 9.0]], 0.1, 1);
        assert_near(&s1[0], &[0.949, -2.023]);
        assert_near(&s1[1], &[0.51, 0.23]);
        // t=2: g' = [0.5 + 0.00949, 0.25 − 0.02023] = [0.50949, 0.22977];
        // buf = 0.9·[0.51, 0.23] + 0.9·g' = [0.917541, 0.413793];
        // p = [0.949 − 0.0917541, −2.023 − 0.0413793].
        let s2 = run(&op, &[&s1[0], &g[1], &s1[1]], 0.1, 2);
        assert_near(&s2[0], &[0.8572459, -2.0643793]);
        assert_near(&s2[1], &[0.917541, 0.413793]);
        // t=3: g' = [−1 + 0.008572459, 2 − 0.020643793]; buf = 0.9·buf + 0.9·g'
        // = [0.8257869 − 0.8922847869, 0.3724137 + 1.7814205863]; p = p − 0.1·buf.
        let s3 = run(&op, &[&s2[0], &g[2], &s2[1]], 0.1, 3);
        assert_near(&s3[1], &[-0.0664978869, 2.1538342863]);
        assert_near(&s3[0], &[0.86389568869, -2.27976272863]);
    }

    #[test]
    fn sgd_nesterov() {
        // lr 0.1, momentum 0.9, no dampening or decay. t=1: buf = g; step g + 0.9·buf =
        // [0.95, 0.475]; p = [0.905, −2.0475]. t=2: buf = 0.9·g + g = [0.95, 0.475];
        // step g + 0.9·buf = [1.355, 0.6775]; p = [0.905 − 0.1355, −2.0475 − 0.06775].
        let op = sgd(0.9, 0.0, true, 0.0);
        let g = [0.5, 0.25];
        let s1 = run(&op, &[&[1.0, -2.0], &g, &[5.0, 5.0]], 0.1, 1);
        assert_near(&s1[0], &[0.905, -2.0475]);
        assert_near(&s1[1], &[0.5, 0.25]);
        let s2 = run(&op, &[&s1[0], &g, &s1[1]], 0.1, 2);
        assert_near(&s2[0], &[0.7695, -2.11525]);
        assert_near(&s2[1], &[0.95, 0.475]);
    }

    #[test]
    fn adam_bias_correction_at_steps_one_and_two() {
        let op = adam(0.0, false, false);
        let p0 = [1.0, -2.0];
        let (g1, g2) = ([0.5, -0.25], [-0.1, 0.3]);
        // t=1: m = 0.1·g = [0.05, −0.025]; v = 0.001·g² = [0.00025, 0.0000625];
        // bc1 = 0.1, bc2 = 0.001; sqrt(v)/sqrt(bc2) = [0.5, 0.25].
        let s1 = run(&op, &[&p0, &g1, &[0.0, 0.0], &[0.0, 0.0]], 0.01, 1);
        assert_near(&s1[1], &[0.05, -0.025]);
        assert_near(&s1[2], &[0.00025, 0.0000625]);
        let p1 = [
            1.0 - 0.1 * 0.05 / (0.5 + 1e-8),
            -2.0 + 0.1 * 0.025 / (0.25 + 1e-8),
        ];
        assert_near(&s1[0], &p1);
        // t=2: m = 0.9·m + 0.1·g = [0.045 − 0.01, −0.0225 + 0.03];
        // v = 0.999·v + 0.001·g² = [0.00024975 + 0.00001, 0.0000624375 + 0.00009];
        // bc1 = 1 − 0.81 = 0.19, bc2 = 1 − 0.998001 = 0.001999.
        let s2 = run(&op, &[&s1[0], &g2, &s1[1], &s1[2]], 0.01, 2);
        let (m2, v2) = ([0.035, 0.0075], [0.00025975, 0.0001524375]);
        assert_near(&s2[1], &m2);
        assert_near(&s2[2], &v2);
        let p2: Vec<f64> = (0..2)
            .map(|i| p1[i] - (0.01 / 0.19) * m2[i] / (v2[i].sqrt() / 0.001999f64.sqrt() + 1e-8))
            .collect();
        assert_near(&s2[0], &p2);
    }

    #[test]
    fn adam_l2_weight_decay_joins_the_gradient() {
        // wd 0.1: g' = g + 0.1·p = [0.6, −0.45]; t=1: sqrt(v)/sqrt(bc2) = |g'|.
        let op = adam(0.1, false, false);
        let s = run(
            &op,
            &[&[1.0, -2.0], &[0.5, -0.25], &[0.0; 2], &[0.0; 2]],
            0.01,
            1,
        );
        assert_near(&s[1], &[0.06, -0.045]);
        assert_near(&s[2], &[0.00036, 0.0002025]);
        let want = [
            1.0 - 0.1 * 0.06 / (0.6 + 1e-8),
            -2.0 + 0.1 * 0.045 / (0.45 + 1e-8),
        ];
        assert_near(&s[0], &want);
    }

    #[test]
    fn adamw_decays_the_weights() {
        // wd 0.1, lr 0.01: p ← p·(1 − 0.001) before the Adam step; the moments ignore wd.
        let op = adam(0.1, true, false);
        let (g1, g2) = ([0.5, -0.25], [-0.1, 0.3]);
        let s1 = run(&op, &[&[1.0, -2.0], &g1, &[0.0; 2], &[0.0; 2]], 0.01, 1);
        let p1 = [
            0.999 - 0.1 * 0.05 / (0.5 + 1e-8),
            -1.998 + 0.1 * 0.025 / (0.25 + 1e-8),
        ];
        assert_near(&s1[0], &p1);
        assert_near(&s1[1], &[0.05, -0.025]);
        let s2 = run(&op, &[&s1[0], &g2, &s1[1], &s1[2]], 0.01, 2);
        let (m2, v2) = ([0.035, 0.0075], [0.00025975, 0.0001524375]);
        let p2: Vec<f64> = (0..2)
            .map(|i| {
                p1[i] * 0.999 - (0.01 / 0.19) * m2[i] / (v2[i].sqrt() / 0.001999f64.sqrt() + 1e-8)
            })
            .collect();
        assert_near(&s2[0], &p2);
    }

    #[test]
    fn clip_coefficient() {
        let coef = |max_norm: f64, grads: &[&[f64]]| {
            run(
                &OpKind::GradNormCoef(GradNormCoef { max_norm }),
                grads,
                0.0,
                1,
            )[0][0]
        };
        // ‖[3, 4, 12]‖ = 13 across two gradients.
        let grads: [&[f64]; 2] = [&[3.0, 4.0], &[0.0, 12.0]];
        assert_eq!(coef(1.0, &grads), 1.0 / (13.0 + 1e-6));
        assert_eq!(coef(12.5, &grads), 12.5 / (13.0 + 1e-6));
        // max_norm = the norm still clips a little, because of the 1e-6 (as in PyTorch).
        assert_eq!(coef(13.0, &grads), 13.0 / (13.0 + 1e-6));
        assert_eq!(coef(13.5, &grads), 1.0);
        assert_eq!(coef(100.0, &grads), 1.0);
        assert_eq!(coef(20.0, &[&[3.0, 4.0]]), 1.0);
        assert_eq!(coef(1.0, &[&[f64::INFINITY, 1.0]]), 0.0);
        assert!(coef(1.0, &[&[f64::NAN, 1.0]]).is_nan());
        assert!(GradNormCoef { max_norm: 1.0 }.infer(&[]).is_err());
    }

    #[test]
    fn clipped_updates_scale_the_gradient_first() {
        let c = 1.0 / (13.0 + 1e-6);
        let clip = |op: OpKind| match op {
            OpKind::SgdStep(s) => OpKind::SgdStep(SgdStep { clip: true, ..s }),
            op => op,
        };
        // SGD, wd 0.5: g' = c·g + 0.5·p (decay after clipping, as clip_grad_norm_ runs first).
        let op = clip(sgd(0.0, 0.0, false, 0.5));
        let s = run(&op, &[&[1.0, -2.0], &[3.0, 4.0], &[c]], 0.1, 1);
        assert_near(
            &s[0],
            &[1.0 - 0.1 * (3.0 * c + 0.5), -2.0 - 0.1 * (4.0 * c - 1.0)],
        );
        // Momentum with clip: buffer holds the clipped gradient.
        let op = clip(sgd(0.9, 0.0, false, 0.0));
        let s = run(&op, &[&[1.0, -2.0], &[3.0, 4.0], &[0.0; 2], &[c]], 0.1, 1);
        assert_near(&s[1], &[3.0 * c, 4.0 * c]);
        // Adam, t=1: m = 0.1·c·g, sqrt(v)/sqrt(bc2) = c·|g|.
        let s = run(
            &adam(0.0, false, true),
            &[&[1.0, -2.0], &[3.0, -4.0], &[0.0; 2], &[0.0; 2], &[c]],
            0.01,
            1,
        );
        assert_near(&s[1], &[0.3 * c, -0.4 * c]);
        let want = [
            1.0 - 0.1 * (0.3 * c) / (3.0 * c + 1e-8),
            -2.0 + 0.1 * (0.4 * c) / (4.0 * c + 1e-8),
        ];
        assert_near(&s[0], &want);
    }

    #[test]
    fn f32_agrees_with_f64() {
        let n = 13;
        let init: Vec<f64> = (0..n).map(|i| (i as f64 * 0.7).sin()).collect();
        let grad =
            |t: usize| -> Vec<f64> { (0..n).map(|i| ((i * 3 + t) as f64 * 1.3).cos()).collect() };
        for op in [
            adam(0.01, false, false),
            adam(0.01, true, false),
            sgd(0.9, 0.1, false, 1e-3),
            sgd(0.9, 0.0, true, 0.0),
        ] {
            // Outputs: p and its optimizer state, fed back each step.
            let k = match &op {
                OpKind::AdamStep(_) => 3,
                _ => 2,
            };
            let mut s64: Vec<Vec<f64>> = vec![init.clone()];
            s64.extend((1..k).map(|_| vec![0.0; n]));
            let mut s32: Vec<Vec<f32>> = s64
                .iter()
                .map(|v| v.iter().map(|&x| x as f32).collect())
                .collect();
            for t in 1..=3 {
                let g64 = grad(t as usize);
                let g32: Vec<f32> = g64.iter().map(|&x| x as f32).collect();
                let mut i64: Vec<&[f64]> = vec![&s64[0], &g64];
                i64.extend(s64[1..].iter().map(|v| v.as_slice()));
                let mut i32: Vec<&[f32]> = vec![&s32[0], &g32];
                i32.extend(s32[1..].iter().map(|v| v.as_slice()));
                s64 = run(&op, &i64, 0.01, t);
                s32 = run(&op, &i32, 0.01, t);
            }
            for (a, b) in s64.iter().flatten().zip(s32.iter().flatten()) {
                assert!(
                    (a - *b as f64).abs() < 1e-5 * a.abs().max(1.0),
                    "{op:?}: {a} {b}"
                );
            }
        }
    }

    #[test]
    fn count_up_increments_an_i32_scalar() {
        let ty = TensorType {
            shape: vec![],
            dtype: DType::I32,
        };
        for n in [0.0, 41.0] {
            let out_types = CountUp.infer(&[&ty]).unwrap();
            let x = [n];
            let mut y = [777.0f64];
            let mut io = Io::new(
                vec![&x[..]],
                vec![&mut y[..]],
                vec![&ty],
                &out_types,
                StepCtx::default(),
            );
            CountUp.eval(&mut io);
            assert_eq!(y[0], n + 1.0);
        }
        assert!(CountUp.infer(&[&TensorType::f32(vec![])]).is_err());
    }
}
