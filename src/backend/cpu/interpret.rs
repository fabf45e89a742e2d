//! An eager interpreter: evaluates every node of a graph in creation order (a topological
//! order) into freshly allocated buffers. Slow and simple on purpose: it is the oracle the
//! planned executor and gradient checks are compared with, in any [`Real`] type.

use std::collections::BTreeMap;

use super::{Io, Real, StepCtx};
use crate::graph::{Graph, TensorId};
use crate::ops::OpKind;

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
                let mut outs: Vec<Vec<T>> = node
                    .outputs
                    .iter()
                    .map(|t| vec![T::ZERO; t.numel()])
                    .collect();
                let ins: Vec<&[T]> = node
                    .inputs
                    .iter()
                    .map(|t| values[t.node as usize][t.output as usize].as_slice())
                    .collect();
                let in_types = node.inputs.iter().map(|&t| g.ty(t)).collect();
                let mut io = Io::new(
                    ins,
                    outs.iter_mut().map(|v| v.as_mut_slice()).collect(),
                    in_types,
                    &node.outputs,
                    ctx,
                );
                op.eval(&mut io);
                outs
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
