//! Elementwise ops: the unary functions of one table (`unary_fn.rs`: adding an activation is a
//! row there) and binary functions with numpy-style broadcasting, all through one WGSL template.

mod chain;
mod unary_fn;

pub use chain::{Chain, ElementwiseFn, Link, Operand};
pub use unary_fn::UnaryFn;

use serde::Serialize;

use crate::kernel::gpu::{Dispatch, KernelArgs};

use super::{
    Eval, OpKind, Primitive, ShapeResult, VjpArgs, VjpCx, VjpResult, expect_arity, expect_f32,
};

use crate::kernel::cpu::{Io, Real};
use crate::kernel::gpu::{Bind, Params, Shader, per_element};
use crate::tensor::{TensorId, TensorType, fmt_shape};

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Unary {
    pub f: UnaryFn,
}

impl Eval for Unary {
    fn eval<T: Real>(&self, io: &mut Io<'_, T>) {
        // Relu as a constant, so its loop compiles to a vector max.
        match self.f {
            UnaryFn::Relu => io.map(|[x]| [UnaryFn::Relu.apply(x)]),
            f => io.map(|[x]| [f.apply(x)]),
        }
    }
}

/// The gradient of a unary function: `dx = f'(x) * dy`. Inputs: x (or y = f(x) when
/// `from_output`), dy.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UnaryGrad {
    pub f: UnaryFn,
    pub from_output: bool,
}

impl Primitive for UnaryGrad {
    fn name(&self) -> &'static str {
        "unary_grad"
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        expect_arity(inputs, 2)?;
        if inputs[0] != inputs[1] {
            return Err("x and dy differ".into());
        }
        Ok(vec![inputs[0].clone()])
    }
    fn flops(&self, _: &[&TensorType], out: &[TensorType]) -> u64 {
        out[0].numel() as u64 * (self.f.cost() + 1)
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        let of = if self.from_output { "y" } else { "x" };
        vec![("fn", self.f.name().to_string()), ("of", of.to_string())]
    }
    fn inplace(&self) -> Option<usize> {
        Some(1)
    }
    fn gpu(&self, args: &KernelArgs) -> Result<Vec<Dispatch>, String> {
        let f = ElementwiseFn::UnaryGrad {
            f: self.f,
            from_output: self.from_output,
        };
        elementwise_kernel(&f.wgsl(), 2, self.f.alpha(), args)
    }
}

impl Eval for UnaryGrad {
    fn eval<T: Real>(&self, io: &mut Io<'_, T>) {
        // Relu as a constant, so its loop compiles to a vector select.
        match (self.f, self.from_output) {
            (UnaryFn::Relu, true) => {
                io.map(|[y, dy]| [UnaryFn::Relu.derivative_from_output(y) * dy])
            }
            (f, true) => io.map(|[y, dy]| [f.derivative_from_output(y) * dy]),
            (f, false) => io.map(|[x, dy]| [f.derivative(x) * dy]),
        }
    }
}

impl Primitive for Unary {
    fn name(&self) -> &'static str {
        self.f.name()
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        expect_arity(inputs, 1)?;
        expect_f32(inputs[0], "the input")?;
        Ok(vec![inputs[0].clone()])
    }
    fn flops(&self, _: &[&TensorType], out: &[TensorType]) -> u64 {
        out[0].numel() as u64 * self.f.cost()
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        self.f.attrs()
    }
    fn vjp(&self, cx: &mut VjpCx, a: &VjpArgs) -> VjpResult {
        let from_output = self.f.grad_from_output();
        let at = if from_output {
            a.outputs[0]
        } else {
            a.inputs[0]
        };
        let dx = cx.op(
            OpKind::UnaryGrad(UnaryGrad {
                f: self.f,
                from_output,
            }),
            &[at, a.dy()?],
        )?;
        Ok(vec![Some(dx)])
    }
    fn inplace(&self) -> Option<usize> {
        Some(0)
    }
    fn gpu(&self, args: &KernelArgs) -> Result<Vec<Dispatch>, String> {
        let f = ElementwiseFn::Unary { f: self.f };
        elementwise_kernel(&f.wgsl(), 1, self.f.alpha(), args)
    }
}

/// The helpers the table's WGSL snippets may call (erf, gelu, ...).
pub(super) const FNS: &str = include_str!("../../kernels/elementwise_fns.wgsl");

/// The elementwise template (kernels/elementwise.wgsl) with `expr` of `a` (and `b`) filled in:
/// one thread per element of output 0, inputs broadcast to it by strides.
fn elementwise_kernel(
    expr: &str,
    inputs: usize,
    alpha: f64,
    args: &KernelArgs,
) -> Result<Vec<Dispatch>, String> {
    const TEMPLATE: &str = include_str!("../../kernels/elementwise.wgsl");
    let (n, rank, mut words) = broadcast_index(args)?;
    // The template reads two inputs' strides whatever the arity.
    words.resize(3, [0; 8]);
    let mut params = Params::new().u32(n).u32(rank).f32(alpha).u32(0);
    for w in words.iter().flatten() {
        params = params.u32(*w);
    }
    let (bindings, body) = if inputs == 1 {
        (
            "@group(0) @binding(2) var<storage, read_write> a: array<f32>;\n\
             @group(0) @binding(3) var<storage, read_write> out: array<f32>;",
            "out[i] = f(a[o.x], 0.0);",
        )
    } else {
        (
            "@group(0) @binding(2) var<storage, read_write> a: array<f32>;\n\
             @group(0) @binding(3) var<storage, read_write> b: array<f32>;\n\
             @group(0) @binding(4) var<storage, read_write> out: array<f32>;",
            "out[i] = f(a[o.x], b[o.y]);",
        )
    };
    let source = format!(
        "{}\n{}",
        crate::kernel::gpu::PREAMBLE,
        TEMPLATE
            .replace("//BINDINGS", bindings)
            .replace("//FNS", FNS)
            .replace("/*EXPR*/", expr)
            .replace("//BODY", body)
    );
    Ok(inputs_to_output(source, inputs, params, n))
}

/// The output's elements, the broadcasting rank (0 where every input has the output's shape,
/// so the kernel indexes all at the element's index) and the index words: the output's dims,
/// then each input's strides along them, each padded to 8.
fn broadcast_index(args: &KernelArgs) -> Result<(usize, usize, Vec<[usize; 8]>), String> {
    let out = &args.outputs[0].shape;
    let same = args.inputs.iter().all(|t| &t.shape == out);
    let rank = if same { 0 } else { out.len() };
    if rank > 8 {
        return Err(format!("broadcasting over rank {rank} (at most 8)"));
    }
    let mut words = vec![[0usize; 8]; 1 + args.inputs.len()];
    if !same {
        words[0][..rank].copy_from_slice(out);
        for (k, t) in args.inputs.iter().enumerate() {
            words[1 + k][..rank].copy_from_slice(&broadcast_strides(&t.shape, out));
        }
    }
    Ok((args.numel_out(0), rank, words))
}

/// One thread per element of output 0 of `source`'s `main`, which binds inputs `0..inputs`
/// and then the output.
fn inputs_to_output(source: String, inputs: usize, params: Params, n: usize) -> Vec<Dispatch> {
    let mut binds: Vec<Bind> = (0..inputs).map(Bind::In).collect();
    binds.push(Bind::Out(0));
    per_element(
        Shader {
            source: source.into(),
            entry: "main",
        },
        binds,
        params.done(),
        n,
    )
}

/// An input's element strides along each output dimension: 0 where it is broadcast.
fn broadcast_strides(input: &[usize], out: &[usize]) -> Vec<usize> {
    let pad = out.len() - input.len();
    let mut strides = vec![0; out.len()];
    let mut s = 1;
    for d in (0..input.len()).rev() {
        strides[pad + d] = if input[d] == 1 { 0 } else { s };
        s *= input[d];
    }
    strides
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BinaryFn {
    Add,
    Mul,
}

/// `a op b` with numpy broadcasting (trailing dims aligned; a dim of 1 stretches).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Binary {
    pub f: BinaryFn,
}

impl Primitive for Binary {
    fn name(&self) -> &'static str {
        match self.f {
            BinaryFn::Add => "add",
            BinaryFn::Mul => "mul",
        }
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        expect_arity(inputs, 2)?;
        expect_f32(inputs[0], "the first input")?;
        expect_f32(inputs[1], "the second input")?;
        Ok(vec![TensorType::f32(broadcast(
            &inputs[0].shape,
            &inputs[1].shape,
        )?)])
    }
    fn flops(&self, _: &[&TensorType], out: &[TensorType]) -> u64 {
        out[0].numel() as u64
    }
    fn vjp(&self, cx: &mut VjpCx, args: &VjpArgs) -> VjpResult {
        let dy = args.dy()?;
        let (a, b) = (args.inputs[0], args.inputs[1]);
        let mut grads = vec![None, None];
        for (k, (x, other)) in [(a, b), (b, a)].into_iter().enumerate() {
            if !args.wants(k) {
                continue;
            }
            let full = match self.f {
                BinaryFn::Add => dy,
                BinaryFn::Mul => cx.mul(dy, other)?,
            };
            let shape = cx.ty(x).shape.clone();
            grads[k] = Some(cx.sum_to(full, &shape)?);
        }
        Ok(grads)
    }
    fn inplace(&self) -> Option<usize> {
        Some(0)
    }
    fn gpu(&self, args: &KernelArgs) -> Result<Vec<Dispatch>, String> {
        elementwise_kernel(&ElementwiseFn::Binary { f: self.f }.wgsl(), 2, 0.0, args)
    }
}

impl Eval for Binary {
    fn eval<T: Real>(&self, io: &mut Io<'_, T>) {
        match self.f {
            BinaryFn::Add => io.map(|[a, b]| [a + b]),
            BinaryFn::Mul => io.map(|[a, b]| [a * b]),
        }
    }
}

/// The numpy broadcast of two shapes, or why they do not broadcast.
pub fn broadcast(a: &[usize], b: &[usize]) -> Result<Vec<usize>, String> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for i in 0..rank {
        let da = if i < rank - a.len() {
            1
        } else {
            a[i - (rank - a.len())]
        };
        let db = if i < rank - b.len() {
            1
        } else {
            b[i - (rank - b.len())]
        };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => {
                return Err(format!(
                    "shapes {} and {} do not match (nor broadcast)",
                    fmt_shape(a),
                    fmt_shape(b)
                ));
            }
        };
    }
    Ok(out)
}

/// Gradient helpers: a sum and a product of two gradients.
impl VjpCx<'_> {
    pub fn add(&mut self, a: TensorId, b: TensorId) -> Result<TensorId, String> {
        self.op(OpKind::Binary(Binary { f: BinaryFn::Add }), &[a, b])
    }
    pub fn mul(&mut self, a: TensorId, b: TensorId) -> Result<TensorId, String> {
        self.op(OpKind::Binary(Binary { f: BinaryFn::Mul }), &[a, b])
    }
}

#[cfg(test)]
mod tests {
    use super::broadcast;

    #[test]
    fn broadcasting_follows_numpy() {
        assert_eq!(
            broadcast(&[4, 16, 7, 7], &[16, 1, 1]).unwrap(),
            vec![4, 16, 7, 7]
        );
        assert_eq!(broadcast(&[3, 1], &[1, 5]).unwrap(), vec![3, 5]);
        assert!(broadcast(&[2, 16, 28, 28], &[2, 32, 14, 14]).is_err());
    }
}
