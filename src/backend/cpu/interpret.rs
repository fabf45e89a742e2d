//! An eager interpreter: evaluates every node of a graph in creation order (a topological
//! order) into freshly allocated buffers. Slow and simple on purpose: it is the oracle the
//! planned executor and gradient checks are compared with, in any [`Real`] type.

use std::collections::BTreeMap;

use crate::kernel::cpu::{Io, Real};

use crate::graph::Graph;
use crate::ops::OpKind;
use crate::tensor::StepCtx;
use crate::tensor::TensorId;
use crate::tensor::TensorType;

/// Values for a graph's leaves: every parameter (by index) and every input (by name).
#[derive(Clone, Debug, Default)]
pub struct Feeds<T> {
    pub params: Vec<Vec<T>>,
    pub inputs: BTreeMap<String, Vec<T>>,
}

/// Every output of every node, indexed `[node][output]`.
pub struct Values<T>(pub Vec<Vec<Vec<T>>>);

impl<T> Values<T> {
    pub fn get(&self, t: TensorId) -> &[T] {
        &self.0[t.node as usize][t.output as usize]
    }
}

pub fn interpret<T: Real>(g: &Graph, feeds: &Feeds<T>, ctx: StepCtx) -> Result<Values<T>, String> {
    let mut values: Vec<Vec<Vec<T>>> = Vec::with_capacity(g.dag.node_count());
    for id in g.dag.node_indices() {
        let node = &g.dag[id];
        let outs = match &node.op {
            OpKind::Parameter(p) => {
                let v = feeds
                    .params
                    .get(p.index)
                    .ok_or_else(|| format!("no value fed for parameter {}", p.index))?;
                vec![v.clone()]
            }
            OpKind::Input(i) => {
                let v = feeds
                    .inputs
                    .get(&i.name)
                    .ok_or_else(|| format!("no value fed for input `{}`", i.name))?;
                vec![v.clone()]
            }
            op => {
                let ins: Vec<(&TensorType, &[T])> = node
                    .inputs
                    .iter()
                    .map(|&t| {
                        (
                            g.ty(t),
                            values[t.node as usize][t.output as usize].as_slice(),
                        )
                    })
                    .collect();
                eval_once(op, &ins, ctx)?
            }
        };
        for (v, t) in outs.iter().zip(&node.outputs) {
            if v.len() != t.numel() {
                return Err(format!(
                    "node {} ({}) produced {} values for a tensor of {}",
                    id.index(),
                    node.op.primitive().name(),
                    v.len(),
                    t.numel()
                ));
            }
        }
        values.push(outs);
    }
    Ok(Values(values))
}

/// Evaluates one op on fresh buffers. Outputs start as NaN, so an element a kernel forgets to
/// write cannot pass a comparison.
pub fn eval_once<T: Real>(
    op: &OpKind,
    ins: &[(&TensorType, &[T])],
    ctx: StepCtx,
) -> Result<Vec<Vec<T>>, String> {
    let types: Vec<&TensorType> = ins.iter().map(|(t, _)| *t).collect();
    let out_types = op.primitive().infer(&types)?;
    let mut outs: Vec<Vec<T>> = out_types
        .iter()
        .map(|t| vec![T::of(f64::NAN); t.numel()])
        .collect();
    let mut scratch =
        vec![T::of(f64::NAN); op.scratch(&types, &out_types, rayon::current_num_threads())];
    let mut io = Io::new(
        ins.iter().map(|(_, v)| *v).collect(),
        outs.iter_mut().map(|v| v.as_mut_slice()).collect(),
        types,
        &out_types,
        ctx,
    )
    .with_scratch(&mut scratch);
    op.eval(&mut io);
    Ok(outs)
}
