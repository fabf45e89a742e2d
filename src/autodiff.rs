//! Reverse-mode autodiff, graph → graph. Walks the forward nodes from the loss back in reverse
//! creation order, asks each op for its vector-Jacobian product (built from ordinary graph
//! ops, in the op's own file), and sums the contributions to a tensor used more than once in
//! a fixed order. The backward pass is therefore itself a graph: planned, recomputed and run
//! like the forward one.

use std::collections::BTreeMap;

use crate::diag::Diagnostic;
use crate::graph::{Graph, Phase};
use crate::ops::{Binary, BinaryFn, Fill, GraphSink, OpKind, VjpArgs, VjpCx, VjpResult};
use crate::tensor::{NodeId, TensorId, TensorType};

/// A vjp's ops land in the backward phase, attributed to the forward node's layer.
struct Backward<'g> {
    g: &'g mut Graph,
    layer: usize,
}

impl GraphSink for Backward<'_> {
    fn add(&mut self, op: OpKind, inputs: &[TensorId]) -> Result<Vec<TensorId>, String> {
        let node = self.g.add_node(op, inputs, self.layer, Phase::Backward)?;
        Ok(self.g.outputs(node))
    }
    fn ty(&self, t: TensorId) -> &TensorType {
        self.g.ty(t)
    }
}

/// Gradients of the scalar `loss` with respect to each of `wrt`, added to `g` as backward
/// nodes (None for a tensor the loss does not depend on).
pub fn gradients(
    g: &mut Graph,
    loss: TensorId,
    wrt: &[TensorId],
) -> Result<Vec<Option<TensorId>>, Diagnostic> {
    let layer = g.dag[loss.node()].layer;
    let fill = OpKind::Fill(Fill {
        ty: g.ty(loss).clone(),
        value: 1.0,
    });
    let one = g
        .add_node(fill, &[], layer, Phase::Backward)
        .map_err(Diagnostic::new)?;
    vjp(g, &[(loss, TensorId::of(one, 0))], wrt)
}

/// The vector-Jacobian product of the forward graph: given a gradient `seed` for each of some
/// outputs, the gradient of Σ⟨seed, output⟩ with respect to each of `wrt`.
pub fn vjp(
    g: &mut Graph,
    seeds: &[(TensorId, TensorId)],
    wrt: &[TensorId],
) -> Result<Vec<Option<TensorId>>, Diagnostic> {
    let n = seeds
        .iter()
        .map(|(t, _)| t.node as usize + 1)
        .max()
        .unwrap_or(0);
    let outputs: Vec<TensorId> = seeds.iter().map(|(t, _)| *t).collect();
    let active = active_nodes(g, n, &outputs, wrt);
    let mut contributions: BTreeMap<TensorId, Vec<TensorId>> = BTreeMap::new();
    for &(t, seed) in seeds {
        contributions.entry(t).or_default().push(seed);
    }
    for i in (0..n).rev() {
        let id = NodeId::new(i);
        if !active[i] || g.dag[id].inputs.is_empty() {
            continue;
        }
        let outputs = g.outputs(id);
        let mut grads = Vec::with_capacity(outputs.len());
        for &t in &outputs {
            grads.push(sum(g, contributions.remove(&t), t).map_err(Diagnostic::new)?);
        }
        if grads.iter().all(Option::is_none) {
            continue;
        }
        let node = g.dag[id].clone();
        let wants: Vec<bool> = node
            .inputs
            .iter()
            .map(|t| active[t.node as usize])
            .collect();
        let args = VjpArgs {
            inputs: node.inputs.clone(),
            outputs,
            grads,
            wants,
        };
        let mut sink = Backward {
            g,
            layer: node.layer,
        };
        let input_grads = node
            .op
            .primitive()
            .vjp(&mut VjpCx::new(&mut sink), &args)
            .and_then(|r| check_grads(g, &args, r))
            .map_err(|e| {
                let layer = &g.layers[node.layer];
                Diagnostic::new(format!("cannot differentiate layer `{}`: {e}", layer.name))
                    .at(layer.loc, "this layer")
            })?;
        for (t, dt) in node.inputs.iter().zip(input_grads) {
            if let (Some(dt), true) = (dt, active[t.node as usize]) {
                contributions.entry(*t).or_default().push(dt);
            }
        }
    }
    wrt.iter()
        .map(|&w| sum(g, contributions.remove(&w), w).map_err(Diagnostic::new))
        .collect()
}

/// Nodes on some path from a `wrt` tensor to the loss: only they need a vjp.
fn active_nodes(g: &Graph, n: usize, outputs: &[TensorId], wrt: &[TensorId]) -> Vec<bool> {
    let mut from_wrt = vec![false; n];
    for w in wrt {
        if (w.node as usize) < n {
            from_wrt[w.node as usize] = true;
        }
    }
    for i in 0..n {
        let node = &g.dag[NodeId::new(i)];
        if node.inputs.iter().any(|t| from_wrt[t.node as usize]) {
            from_wrt[i] = true;
        }
    }
    let mut to_loss = vec![false; n];
    for t in outputs {
        to_loss[t.node as usize] = true;
    }
    for i in (0..n).rev() {
        if to_loss[i] {
            for t in &g.dag[NodeId::new(i)].inputs {
                to_loss[t.node as usize] = true;
            }
        }
    }
    (0..n).map(|i| from_wrt[i] && to_loss[i]).collect()
}

/// A vjp must give one gradient per input, shaped like it.
fn check_grads(g: &Graph, args: &VjpArgs, r: Vec<Option<TensorId>>) -> VjpResult {
    if r.len() != args.inputs.len() {
        return Err(format!(
            "its gradient has {} results for {} inputs (a bug)",
            r.len(),
            args.inputs.len()
        ));
    }
    for (k, (&x, dx)) in args.inputs.iter().zip(&r).enumerate() {
        if let Some(dx) = dx
            && args.wants[k]
            && g.ty(*dx) != g.ty(x)
        {
            return Err(format!(
                "the gradient of input {k} has type {:?}, the input {:?} (a bug)",
                g.ty(*dx),
                g.ty(x)
            ));
        }
    }
    Ok(r)
}

/// Sums gradient contributions left to right, in the order they were made (deterministic).
fn sum(
    g: &mut Graph,
    parts: Option<Vec<TensorId>>,
    of: TensorId,
) -> Result<Option<TensorId>, String> {
    let Some(parts) = parts else {
        return Ok(None);
    };
    let layer = g.dag[of.node()].layer;
    let mut acc = parts[0];
    for &p in &parts[1..] {
        let add = OpKind::Binary(Binary { f: BinaryFn::Add });
        acc = TensorId::of(g.add_node(add, &[acc, p], layer, Phase::Backward)?, 0);
    }
    Ok(Some(acc))
}
