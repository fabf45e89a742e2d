//! A fused elementwise chain: a small tree of unary, unary-gradient and binary ops (made by
//! the fusion pass, schedule/fuse/chains.rs) as one launch with N inputs and one output, each
//! output element computed from its inputs in registers, the intermediates never stored.
//!
//! Both evaluations are the unfused ops' own: the CPU applies each link's function (the
//! elementwise table's `apply`, `derivative`, `+`, `*`) in link order; the GPU kernel is
//! generated from the same WGSL snippets as the single-op kernels, one function per link, with
//! the numpy broadcasting index math of each input to the chain's output. A link's result is
//! an f32, as the tensor it replaces was, so a chain gives the unfused ops' bits. On the GPU
//! each link's value goes through common.wgsl's `stored`, so a driver that contracts
//! `a * b + c` into an fma (NVIDIA's does) cannot do it across links either
//! (tests/gpu_elementwise.rs).

use std::fmt::Write;

use serde::Serialize;

use super::{BinaryFn, FNS, UnaryFn, broadcast_index, inputs_to_output};
use crate::kernel::cpu::{Io, Real, TILE};
use crate::kernel::gpu::{Dispatch, KernelArgs, Params};
use crate::ops::{Binary, Eval, OpKind, Primitive, ShapeResult, Unary, UnaryGrad};
use crate::tensor::TensorType;

/// Storage bindings a chain's kernel may have (its inputs and its output): WebGPU's guaranteed
/// `max_storage_buffers_per_shader_stage`.
const MAX_BINDINGS: usize = 8;
const MAX_INPUTS: usize = Chain::MAX_INPUTS;
const MAX_LINKS: usize = Chain::MAX_LINKS;

/// One elementwise function of a chain: what a `Unary`, `UnaryGrad` or `Binary` computes.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ElementwiseFn {
    Unary { f: UnaryFn },
    UnaryGrad { f: UnaryFn, from_output: bool },
    Binary { f: BinaryFn },
}

impl ElementwiseFn {
    /// The function of an elementwise op, or None for any other op.
    pub fn of(op: &OpKind) -> Option<ElementwiseFn> {
        Some(match op {
            OpKind::Unary(u) => ElementwiseFn::Unary { f: u.f },
            OpKind::UnaryGrad(g) => ElementwiseFn::UnaryGrad {
                f: g.f,
                from_output: g.from_output,
            },
            OpKind::Binary(b) => ElementwiseFn::Binary { f: b.f },
            _ => return None,
        })
    }

    /// The op that computes it alone.
    pub fn op(self) -> OpKind {
        match self {
            ElementwiseFn::Unary { f } => OpKind::Unary(Unary { f }),
            ElementwiseFn::UnaryGrad { f, from_output } => {
                OpKind::UnaryGrad(UnaryGrad { f, from_output })
            }
            ElementwiseFn::Binary { f } => OpKind::Binary(Binary { f }),
        }
    }

    pub fn arity(self) -> usize {
        match self {
            ElementwiseFn::Unary { .. } => 1,
            _ => 2,
        }
    }

    /// The value at one element (`b` unused by a unary function), as the single op's CPU
    /// evaluation computes it.
    #[inline(always)]
    pub fn apply<T: Real>(self, a: T, b: T) -> T {
        match self {
            ElementwiseFn::Unary { f } => f.apply(a),
            ElementwiseFn::UnaryGrad {
                f,
                from_output: true,
            } => f.derivative_from_output(a) * b,
            ElementwiseFn::UnaryGrad {
                f,
                from_output: false,
            } => f.derivative(a) * b,
            ElementwiseFn::Binary { f: BinaryFn::Add } => a + b,
            ElementwiseFn::Binary { f: BinaryFn::Mul } => a * b,
        }
    }

    /// The value as a WGSL expression of `a` and `b` (and `p.alpha`, the function's parameter):
    /// what the single op's kernel and a chain's link both evaluate.
    pub fn wgsl(self) -> String {
        match self {
            ElementwiseFn::Unary { f } => f.wgsl().to_string(),
            ElementwiseFn::UnaryGrad { f, from_output } => {
                format!("({}) * b", f.wgsl_derivative(from_output))
            }
            ElementwiseFn::Binary { f: BinaryFn::Add } => "a + b".into(),
            ElementwiseFn::Binary { f: BinaryFn::Mul } => "a * b".into(),
        }
    }

    /// [`ElementwiseFn::wgsl`] with the parameter as a constant: the bits the single op's
    /// `Params::f32` passes as `p.alpha`, for kernels with no `p.alpha` of their own.
    pub fn wgsl_inline(self) -> String {
        let alpha = format!("bitcast<f32>({}u)", (self.alpha() as f32).to_bits());
        self.wgsl().replace("p.alpha", &alpha)
    }

    /// The parameter (`p.alpha` of the snippet), 0 without one.
    fn alpha(self) -> f64 {
        match self {
            ElementwiseFn::Unary { f } | ElementwiseFn::UnaryGrad { f, .. } => f.alpha(),
            ElementwiseFn::Binary { .. } => 0.0,
        }
    }
}

/// What a link reads: an input of the chain or an earlier link's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Operand {
    Input(usize),
    Link(usize),
}

/// One op of the chain and what it reads, in the op's input order.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Link {
    pub f: ElementwiseFn,
    pub args: Vec<Operand>,
}

/// Elementwise ops evaluated as one: the last link's value is the output. Links read inputs
/// and earlier links only (creation order of the ops they stand for).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Chain {
    pub links: Vec<Link>,
}

impl Chain {
    /// Inputs of one chain: every binding but the output's.
    pub const MAX_INPUTS: usize = MAX_BINDINGS - 1;
    /// Links of one chain: the CPU keeps every link's value of an element on the stack.
    pub const MAX_LINKS: usize = 16;

    /// Each link as its own op: (op, its input types, its output type), in link order: the
    /// unfused launches (for `dispatches`), and the shape rule of each.
    pub fn unfused(
        &self,
        inputs: &[&TensorType],
    ) -> Result<Vec<(OpKind, Vec<TensorType>, TensorType)>, String> {
        if self.links.is_empty() || self.links.len() > MAX_LINKS {
            return Err(format!(
                "a chain has 1 to {MAX_LINKS} links, not {}",
                self.links.len()
            ));
        }
        if inputs.is_empty() || inputs.len() > MAX_INPUTS {
            return Err(format!(
                "a chain has 1 to {MAX_INPUTS} inputs, not {}",
                inputs.len()
            ));
        }
        let mut out: Vec<(OpKind, Vec<TensorType>, TensorType)> = Vec::new();
        for (k, link) in self.links.iter().enumerate() {
            if link.args.len() != link.f.arity() {
                return Err(format!(
                    "link {k} reads {} values, its function takes {}",
                    link.args.len(),
                    link.f.arity()
                ));
            }
            let types = link
                .args
                .iter()
                .map(|&a| match a {
                    Operand::Input(i) if i < inputs.len() => Ok(inputs[i].clone()),
                    Operand::Link(j) if j < k => Ok(out[j].2.clone()),
                    _ => Err(format!("link {k} reads {a:?}, which it cannot")),
                })
                .collect::<Result<Vec<_>, String>>()?;
            let op = link.f.op();
            let refs: Vec<&TensorType> = types.iter().collect();
            let ty = op
                .primitive()
                .infer(&refs)
                .map_err(|e| format!("link {k} ({}): {e}", op.primitive().name()))?
                .remove(0);
            out.push((op, types, ty));
        }
        Ok(out)
    }

    /// The output at a tile of elements from the inputs' values there, link after link, each
    /// over the whole tile (elements past `len` are computed and dropped).
    fn tile<T: Real>(&self, x: &[[T; TILE]], len: usize, y: &mut [T; TILE]) {
        let mut v = [[T::ZERO; TILE]; MAX_LINKS];
        for (k, link) in self.links.iter().enumerate() {
            let (done, rest) = v.split_at_mut(k);
            let at = |o: Operand| match o {
                Operand::Input(i) => &x[i],
                Operand::Link(j) => &done[j],
            };
            let zeros = [T::ZERO; TILE];
            let b = link.args.get(1).map_or(&zeros, |&o| at(o));
            apply_tile(link.f, at(link.args[0]), b, &mut rest[0]);
        }
        y[..len].copy_from_slice(&v[self.links.len() - 1][..len]);
    }

    /// The chain as one expression, for plans and graphs: `relu(add(x0, x1))`.
    fn expression(&self) -> String {
        fn write(c: &Chain, k: usize, s: &mut String) {
            let link = &c.links[k];
            let op = link.f.op();
            let attrs: Vec<String> = op
                .primitive()
                .attrs()
                .into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            s.push_str(op.primitive().name());
            if !attrs.is_empty() {
                let _ = write!(s, "[{}]", attrs.join(","));
            }
            s.push('(');
            for (i, a) in link.args.iter().enumerate() {
                if i > 0 {
                    s.push_str(", ");
                }
                match *a {
                    Operand::Input(j) => {
                        let _ = write!(s, "x{j}");
                    }
                    Operand::Link(j) => write(c, j, s),
                }
            }
            s.push(')');
        }
        let mut s = String::new();
        write(self, self.links.len() - 1, &mut s);
        s
    }
}

impl Primitive for Chain {
    fn name(&self) -> &'static str {
        "elementwise_chain"
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        let links = self.unfused(inputs)?;
        Ok(vec![links.last().expect("checked non-empty").2.clone()])
    }
    /// The links' own FLOPs, as unfused: the same arithmetic.
    fn flops(&self, inputs: &[&TensorType], _: &[TensorType]) -> u64 {
        self.unfused(inputs).map_or(0, |links| {
            links
                .iter()
                .map(|(op, ins, out)| {
                    let ins: Vec<&TensorType> = ins.iter().collect();
                    op.primitive().flops(&ins, std::slice::from_ref(out))
                })
                .sum()
        })
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        vec![("expr", self.expression())]
    }
    /// Element i of input 0 is read by thread i alone, before it writes output element i.
    fn inplace(&self) -> Option<usize> {
        Some(0)
    }
    fn gpu(&self, args: &KernelArgs) -> Result<Vec<Dispatch>, String> {
        chain_kernel(self, args)
    }
}

impl Eval for Chain {
    fn eval<T: Real>(&self, io: &mut Io<'_, T>) {
        // `Io::map_tiles` takes its arity as a constant.
        let f = |x: &[[T; TILE]], len, y: &mut [T; TILE]| self.tile(x, len, y);
        match io.inputs() {
            1 => io.map_tiles::<1>(|x, len, y| f(x, len, y)),
            2 => io.map_tiles::<2>(|x, len, y| f(x, len, y)),
            3 => io.map_tiles::<3>(|x, len, y| f(x, len, y)),
            4 => io.map_tiles::<4>(|x, len, y| f(x, len, y)),
            5 => io.map_tiles::<5>(|x, len, y| f(x, len, y)),
            6 => io.map_tiles::<6>(|x, len, y| f(x, len, y)),
            7 => io.map_tiles::<7>(|x, len, y| f(x, len, y)),
            n => unreachable!("a chain of {n} inputs (infer allows 1 to {MAX_INPUTS})"),
        }
    }
}

/// One link over a tile: `out[t] = f(a[t], b[t])`, as `ElementwiseFn::apply` computes it, with
/// the function chosen once per tile (and the common ones' loops free of any branch on it).
#[inline(always)]
fn apply_tile<T: Real>(f: ElementwiseFn, a: &[T; TILE], b: &[T; TILE], out: &mut [T; TILE]) {
    #[inline(always)]
    fn each<T: Real>(a: &[T; TILE], b: &[T; TILE], out: &mut [T; TILE], g: impl Fn(T, T) -> T) {
        for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
            *o = g(a, b);
        }
    }
    let relu = UnaryFn::Relu;
    match f {
        ElementwiseFn::Binary { f: BinaryFn::Add } => each(a, b, out, |a, b| a + b),
        ElementwiseFn::Binary { f: BinaryFn::Mul } => each(a, b, out, |a, b| a * b),
        ElementwiseFn::Unary { f: UnaryFn::Relu } => each(a, b, out, |a, _| relu.apply(a)),
        ElementwiseFn::UnaryGrad {
            f: UnaryFn::Relu,
            from_output: true,
        } => each(a, b, out, |a, b| relu.derivative_from_output(a) * b),
        f => each(a, b, out, |a, b| f.apply(a, b)),
    }
}

/// The chain's kernel: kernels/elementwise_fns.wgsl, a function per link (its snippet, its
/// parameter as a constant), and one thread per output element reading each input at its
/// broadcast offset (all at the element's index where every input has the output's shape).
fn chain_kernel(chain: &Chain, args: &KernelArgs) -> Result<Vec<Dispatch>, String> {
    let inputs = args.inputs.len();
    let (n, rank, words) = broadcast_index(args)?;
    let mut params = Params::new().u32(n).u32(rank).u32(0).u32(0);
    for w in words.iter().flatten() {
        params = params.u32(*w);
    }

    let mut s = String::new();
    let _ = writeln!(
        s,
        "struct Params {{\n    n: u32,\n    rank: u32,\n    _pad0: u32,\n    _pad1: u32,\n    \
         dims: array<vec4<u32>, 2>,\n    // Input k's stride along dim d at word 8k + d.\n    \
         strides: array<vec4<u32>, {}>,\n}}\n\n@group(0) @binding(0) var<uniform> p: Params;\n",
        2 * inputs
    );
    for k in 0..inputs {
        let _ = writeln!(
            s,
            "@group(0) @binding({}) var<storage, read_write> x{k}: array<f32>;",
            2 + k
        );
    }
    let _ = writeln!(
        s,
        "@group(0) @binding({}) var<storage, read_write> out: array<f32>;\n",
        2 + inputs
    );
    s.push_str(FNS);
    s.push('\n');
    for (k, link) in chain.links.iter().enumerate() {
        let expr = link.f.wgsl_inline();
        let _ = writeln!(
            s,
            "fn link{k}(a: f32, b: f32) -> f32 {{\n    return {expr};\n}}\n"
        );
    }
    s.push_str(
        "fn stride(w: u32) -> u32 {\n    return p.strides[w / 4u][w % 4u];\n}\n\n\
         @compute @workgroup_size(256)\n\
         fn main(@builtin(workgroup_id) wid: vec3<u32>,\n        \
         @builtin(num_workgroups) nwg: vec3<u32>,\n        \
         @builtin(local_invocation_id) lid: vec3<u32>) {\n    \
         let i = linear_index(wid, nwg, lid);\n    if (i >= p.n) {\n        return;\n    }\n",
    );
    for k in 0..inputs {
        let _ = writeln!(s, "    var o{k} = i;");
    }
    s.push_str("    if (p.rank != 0u) {\n        var rest = i;\n");
    for k in 0..inputs {
        let _ = writeln!(s, "        o{k} = 0u;");
    }
    s.push_str(
        "        for (var d = p.rank; d > 0u; d = d - 1u) {\n            \
         let size = p.dims[(d - 1u) / 4u][(d - 1u) % 4u];\n            \
         let c = rest % size;\n            rest = rest / size;\n",
    );
    for k in 0..inputs {
        let _ = writeln!(
            s,
            "            o{k} = o{k} + c * stride({}u + d - 1u);",
            8 * k
        );
    }
    s.push_str("        }\n    }\n");
    for (k, link) in chain.links.iter().enumerate() {
        let arg = |a: Option<&Operand>| match a {
            Some(Operand::Input(j)) => format!("x{j}[o{j}]"),
            Some(Operand::Link(j)) => format!("v{j}"),
            None => "0.0".to_string(),
        };
        // `stored`: each link's value rounded as its own launch would store it.
        let _ = writeln!(
            s,
            "    let v{k} = stored(link{k}({}, {}));",
            arg(link.args.first()),
            arg(link.args.get(1))
        );
    }
    let _ = writeln!(s, "    out[i] = v{};\n}}", chain.links.len() - 1);

    let source = format!("{}\n{s}", crate::kernel::gpu::PREAMBLE);
    Ok(inputs_to_output(source, inputs, params, n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::eval_once;
    use crate::tensor::StepCtx;

    fn link(f: ElementwiseFn, args: &[Operand]) -> Link {
        Link {
            f,
            args: args.to_vec(),
        }
    }

    /// relu(x0 + x1) · x2 with x1 a bias broadcast over rows: the chain's CPU value is the
    /// unfused ops' bits, and its shape rule is theirs.
    #[test]
    fn a_chain_computes_what_its_links_compute() {
        use Operand::{Input, Link};
        let chain = Chain {
            links: vec![
                link(
                    ElementwiseFn::Binary { f: BinaryFn::Add },
                    &[Input(0), Input(1)],
                ),
                link(
                    ElementwiseFn::Unary {
                        f: UnaryFn::LeakyRelu { slope: 0.1 },
                    },
                    &[Link(0)],
                ),
                link(
                    ElementwiseFn::Binary { f: BinaryFn::Mul },
                    &[Link(1), Input(2)],
                ),
            ],
        };
        let types = [
            TensorType::f32(vec![3, 5]),
            TensorType::f32(vec![5]),
            TensorType::f32(vec![3, 5]),
        ];
        let x: Vec<Vec<f32>> = types
            .iter()
            .enumerate()
            .map(|(k, t)| {
                (0..t.numel())
                    .map(|i| (i as f32 * 0.37 - 2.1) * (k as f32 + 0.5))
                    .collect()
            })
            .collect();
        let ins: Vec<(&TensorType, &[f32])> =
            types.iter().zip(&x).map(|(t, v)| (t, &v[..])).collect();
        let got = eval_once(&OpKind::Chain(chain.clone()), &ins, StepCtx::default()).unwrap();
        let ctx = StepCtx::default();
        let sum = eval_once(&chain.links[0].f.op(), &ins[..2], ctx)
            .unwrap()
            .remove(0);
        let sum_ty = TensorType::f32(vec![3, 5]);
        let act = eval_once(&chain.links[1].f.op(), &[(&sum_ty, &sum[..])], ctx)
            .unwrap()
            .remove(0);
        let want = eval_once(&chain.links[2].f.op(), &[(&sum_ty, &act[..]), ins[2]], ctx)
            .unwrap()
            .remove(0);
        assert_eq!(
            got[0].iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            want.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        let refs: Vec<&TensorType> = types.iter().collect();
        assert_eq!(
            chain.attrs()[0].1,
            "mul(leaky_relu[slope=0.1](add(x0, x1)), x2)"
        );
        assert!(chain.infer(&refs[..2]).is_err(), "input 2 missing");
        let bad = Chain {
            links: vec![link(ElementwiseFn::Unary { f: UnaryFn::Relu }, &[Link(0)])],
        };
        assert!(bad.infer(&refs).is_err(), "a link reading itself");
    }
}
