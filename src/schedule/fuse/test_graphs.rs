//! Graphs the fusion passes' unit tests share: ResNet-20's training step and small hand-built
//! graphs.

use crate::graph::{Graph, Phase};
use crate::ops::{Input, OpKind};
use crate::tensor::{TensorId, TensorType};

/// configs/resnet.toml's training graph (forward, backward, updates), unfused.
pub fn resnet20_step() -> Graph {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/resnet.toml");
    let cfg = crate::config::load(std::path::Path::new(path), &[])
        .result
        .unwrap();
    let forward = crate::nn::build(&cfg).unwrap();
    crate::training::training_graph(&forward, &cfg.optimizer).unwrap()
}

/// Nodes of `g` whose op is named `name`.
pub fn count(g: &Graph, name: &str) -> usize {
    g.dag
        .node_weights()
        .filter(|n| n.op.primitive().name() == name)
        .count()
}

/// A new forward input of `shape`.
pub fn input(g: &mut Graph, name: &str, shape: &[usize]) -> TensorId {
    let op = OpKind::Input(Input {
        name: name.into(),
        ty: TensorType::f32(shape.to_vec()),
    });
    TensorId::of(g.add_node(op, &[], 0, Phase::Forward).unwrap(), 0)
}

/// Output 0 of a new forward node `op` on `ins`.
pub fn op(g: &mut Graph, op: OpKind, ins: &[TensorId]) -> TensorId {
    TensorId::of(g.add_node(op, ins, 0, Phase::Forward).unwrap(), 0)
}
