//! The training graph: one plan is one whole step. Forward, loss, backward (autodiff), then the
//! updates as graph ops: gradient clipping, the optimizer on every trainable parameter, and
//! batchnorm's running statistics. An update's output is written over the state it replaces
//! (`Graph::updates`); learning rate and step count are runtime scalars, not graph constants.

use crate::graph::{Graph, Init, Phase};

use crate::autodiff;
use crate::config::Optimizer;
use crate::diag::Diagnostic;
use crate::ops::{BatchNormRunningStats, CountUp, GradNormCoef, OpKind, Parameter};
use crate::tensor::TensorId;

pub fn training_graph(forward: &Graph, optimizer: &Optimizer) -> Result<Graph, Diagnostic> {
    let mut g = forward.clone();
    let wrt: Vec<(usize, TensorId)> = g
        .params
        .iter()
        .enumerate()
        .filter(|(_, p)| p.trainable)
        .filter_map(|(i, p)| p.node.map(|n| (i, TensorId::of(n, 0))))
        .collect();
    let ids: Vec<TensorId> = wrt.iter().map(|&(_, t)| t).collect();
    let loss = g.loss;
    let grads = autodiff::gradients(&mut g, loss, &ids)?;
    // A parameter the loss does not reach keeps its value, as in PyTorch (its grad is None).
    g.grads = wrt
        .iter()
        .zip(grads)
        .filter_map(|(&(i, _), dt)| dt.map(|dt| (i, dt)))
        .collect();
    let loss_layer = g.dag[g.loss.node()].layer;
    let fail = |e: String| Diagnostic::new(format!("building the optimizer step: {e} (a bug)"));
    let coef = match optimizer.clip_grad_norm() {
        Some(max_norm) if !g.grads.is_empty() => {
            let all: Vec<TensorId> = g.grads.iter().map(|&(_, t)| t).collect();
            let op = OpKind::GradNormCoef(GradNormCoef { max_norm });
            let n = g
                .add_node(op, &all, loss_layer, Phase::Update)
                .map_err(fail)?;
            Some(TensorId::of(n, 0))
        }
        _ => None,
    };
    for (i, grad) in g.grads.clone() {
        // Weight decay by parameter group: `[optimizer] decay` and `no_decay`.
        let decay = optimizer.decays(&g.params[i].name, g.params[i].ty.shape.len());
        let (op, state_names) = optimizer.update(coef.is_some(), decay);
        let layer = g.params[i].layer;
        let p = TensorId::of(g.params[i].node.expect("trainable params are read"), 0);
        let mut inputs = vec![p, grad];
        let states = state_names
            .iter()
            .map(|name| state(&mut g, i, name))
            .collect::<Result<Vec<_>, _>>()
            .map_err(fail)?;
        inputs.extend(states.iter().map(|&(_, t)| t));
        inputs.extend(coef);
        let n = g
            .add_node(op, &inputs, layer, Phase::Update)
            .map_err(fail)?;
        g.updates.push((i, TensorId::of(n, 0)));
        for (k, &(s, _)) in states.iter().enumerate() {
            g.updates.push((s, TensorId::of(n, k + 1)));
        }
    }
    running_stats(&mut g).map_err(fail)?;
    Ok(g)
}

/// A zero-initialised optimizer state tensor for parameter `i`, named like its parameter.
fn state(g: &mut Graph, i: usize, what: &str) -> Result<(usize, TensorId), String> {
    let p = &g.params[i];
    let (name, ty, layer) = (format!("{}.{what}", p.name), p.ty.clone(), p.layer);
    let t = g
        .add_param(name, ty, Init::Zeros, false, layer, true)?
        .expect("read");
    let index = g.params.len() - 1;
    g.params[index].optimizer_of = Some(i);
    Ok((index, t))
}

/// Each training-mode batchnorm updates its running mean and variance from the batch
/// statistics it computed, and counts the batch (`num_batches_tracked`).
fn running_stats(g: &mut Graph) -> Result<(), String> {
    let bns: Vec<_> = g
        .dag
        .node_indices()
        .filter(|&id| g.dag[id].phase == Phase::Forward)
        .filter_map(|id| match &g.dag[id].op {
            OpKind::BatchNorm(bn) if bn.training => Some((id, bn.momentum)),
            _ => None,
        })
        .collect();
    for (id, momentum) in bns {
        let node = g.dag[id].clone();
        let k = node.inputs.len();
        let (rm, rv) = (node.inputs[k - 2], node.inputs[k - 1]);
        let index = |t: TensorId| match &g.dag[t.node()].op {
            OpKind::Parameter(p) => Ok(p.index),
            _ => Err("batchnorm statistics must be parameters".to_string()),
        };
        let (rm_i, rv_i) = (index(rm)?, index(rv)?);
        let x = g.ty(node.inputs[0]);
        let count = x.numel() / x.shape[1];
        let op = OpKind::BatchNormRunningStats(BatchNormRunningStats { momentum, count });
        let stats = [rm, rv, TensorId::of(id, 1), TensorId::of(id, 2)];
        let n = g.add_node(op, &stats, node.layer, Phase::Update)?;
        g.updates.push((rm_i, TensorId::of(n, 0)));
        g.updates.push((rv_i, TensorId::of(n, 1)));
        let tracked = g
            .params
            .iter()
            .position(|p| p.layer == node.layer && p.name.ends_with(".num_batches_tracked"));
        if let Some(t) = tracked {
            let ty = g.params[t].ty.clone();
            let read = g.add_node(
                OpKind::Parameter(Parameter { index: t, ty }),
                &[],
                node.layer,
                Phase::Update,
            )?;
            g.params[t].node = Some(read);
            let up = g.add_node(
                OpKind::CountUp(CountUp),
                &[TensorId::of(read, 0)],
                node.layer,
                Phase::Update,
            )?;
            g.updates.push((t, TensorId::of(up, 0)));
        }
    }
    Ok(())
}
