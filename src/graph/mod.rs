//! The static forward graph: a petgraph DAG of primitive ops. Tensor handles are plain `Copy`
//! ids; the graph holds shapes and dtypes, never tensor data. Every node points at the layer it
//! was lowered from, and every layer at its config location, so any later error can name both.

pub mod export;
pub mod init;
pub mod summary;

use petgraph::graph::DiGraph;
use serde::Serialize;

pub use init::Init;

use crate::diag::Loc;
use crate::ops::{OpKind, Parameter};
use crate::tensor::{NodeId, TensorId, TensorType};

/// Which part of a training step a node belongs to. Order matters: the plan runs forward,
/// then backward (with recomputation interleaved), then the updates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Forward,
    Backward,
    /// A forward op cloned by checkpointing to bring a dropped activation back in backward.
    Recompute,
    /// Optimizer and running-statistics updates, after every gradient is known.
    Update,
}

/// What a forward graph is built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Train,
    Eval,
}

#[derive(Clone, Debug)]
pub struct Node {
    pub op: OpKind,
    pub phase: Phase,
    /// Inputs in argument order (petgraph edges mirror them for traversal).
    pub inputs: Vec<TensorId>,
    pub outputs: Vec<TensorType>,
    /// Index into `Graph::layers`.
    pub layer: usize,
}

/// Edge weight: which output of the source feeds which argument of the target.
#[derive(Clone, Copy, Debug)]
pub struct Edge {
    pub output: u32,
    pub slot: u32,
}

/// A layer of the config after block expansion, with its full dotted name.
#[derive(Clone, Debug)]
pub struct Layer {
    pub name: String,
    /// The config op (`conv2d`, `linear`, ...) or the role (`input`, `loss`, `residual`).
    pub op: String,
    /// Where it is defined; inside a block, the line in the block's body.
    pub loc: Loc,
    /// Block use sites it was expanded through, outermost first.
    pub uses: Vec<Loc>,
    /// The innermost block instance it belongs to (`layer2.0`), a checkpointing segment.
    pub block: Option<String>,
    pub output: Option<TensorId>,
}

/// A learned parameter or a persistent buffer, named as PyTorch's state_dict would name it.
#[derive(Clone, Debug, Serialize)]
pub struct Param {
    pub name: String,
    pub ty: TensorType,
    pub init: Init,
    /// False for buffers (batchnorm running statistics): saved, not trained.
    pub trainable: bool,
    /// Optimizer state (momentum, Adam moments) of the parameter at this index; such state is
    /// added by the training graph, not the model.
    pub optimizer_of: Option<usize>,
    pub layer: usize,
    /// The graph node reading it; None for state no forward op reads (num_batches_tracked).
    #[serde(skip)]
    pub node: Option<NodeId>,
}

#[derive(Clone, Debug)]
pub struct Graph {
    pub dag: DiGraph<Node, Edge, u32>,
    pub layers: Vec<Layer>,
    pub params: Vec<Param>,
    /// Leading dim of every activation.
    pub batch: usize,
    pub features: TensorId,
    pub labels: TensorId,
    /// The model's output (logits), before the loss.
    pub output: TensorId,
    /// The scalar loss.
    pub loss: TensorId,
    /// Training graphs: the gradient of each trainable parameter (by index into `params`).
    pub grads: Vec<(usize, TensorId)>,
    /// Training graphs: after a step, `params[i]` holds the tensor (optimizer, running stats).
    pub updates: Vec<(usize, TensorId)>,
    /// Second names of shared parameters (weight tying: `lm_head.weight` for the token
    /// embedding's `transformer.wte.weight`): checkpoints hold the tensor under both, as
    /// PyTorch's state_dict does.
    pub tied: Vec<(String, usize)>,
}

impl Graph {
    /// A graph with no nodes and one layer called `name`, for building ops by hand (gradient
    /// checks, tests). Its features, labels, output and loss are set by whoever fills it.
    pub fn scratch(name: &str) -> Graph {
        let at = TensorId { node: 0, output: 0 };
        Graph {
            dag: DiGraph::default(),
            layers: vec![Layer {
                name: name.to_string(),
                op: name.to_string(),
                loc: Loc::new(crate::diag::FileId(0), 0..0),
                uses: Vec::new(),
                block: None,
                output: None,
            }],
            params: Vec::new(),
            batch: 1,
            features: at,
            labels: at,
            output: at,
            loss: at,
            grads: Vec::new(),
            updates: Vec::new(),
            tied: Vec::new(),
        }
    }
    pub fn node(&self, id: NodeId) -> &Node {
        &self.dag[id]
    }
    pub fn ty(&self, t: TensorId) -> &TensorType {
        &self.dag[t.node()].outputs[t.output as usize]
    }
    /// Trainable parameter count (what PyTorch's `sum(p.numel() for p in parameters())` gives).
    pub fn param_count(&self) -> usize {
        self.params
            .iter()
            .filter(|p| p.trainable)
            .map(|p| p.ty.numel())
            .sum()
    }
    pub fn flops(&self, id: NodeId) -> u64 {
        let n = &self.dag[id];
        let inputs: Vec<&TensorType> = n.inputs.iter().map(|&t| self.ty(t)).collect();
        n.op.primitive().flops(&inputs, &n.outputs)
    }

    /// Adds a forward node after inferring its output types; returns its first output.
    pub(crate) fn add(
        &mut self,
        op: OpKind,
        inputs: &[TensorId],
        layer: usize,
    ) -> Result<TensorId, String> {
        self.add_node(op, inputs, layer, Phase::Forward)
            .map(|n| TensorId::of(n, 0))
    }

    /// Adds a node after inferring its output types from its inputs.
    pub fn add_node(
        &mut self,
        op: OpKind,
        inputs: &[TensorId],
        layer: usize,
        phase: Phase,
    ) -> Result<NodeId, String> {
        let types: Vec<&TensorType> = inputs.iter().map(|&t| self.ty(t)).collect();
        let outputs = op.primitive().infer(&types)?;
        outputs.iter().try_for_each(TensorType::check_size)?;
        let id = self.dag.add_node(Node {
            op,
            phase,
            inputs: inputs.to_vec(),
            outputs,
            layer,
        });
        for (slot, t) in inputs.iter().enumerate() {
            self.dag.add_edge(
                t.node(),
                id,
                Edge {
                    output: t.output,
                    slot: slot as u32,
                },
            );
        }
        Ok(id)
    }

    /// Every output of a node.
    pub fn outputs(&self, id: NodeId) -> Vec<TensorId> {
        (0..self.dag[id].outputs.len())
            .map(|k| TensorId::of(id, k))
            .collect()
    }

    pub fn add_param(
        &mut self,
        name: String,
        ty: TensorType,
        init: Init,
        trainable: bool,
        layer: usize,
        read: bool,
    ) -> Result<Option<TensorId>, String> {
        ty.check_size()
            .map_err(|e| format!("parameter `{name}`: {e}"))?;
        let index = self.params.len();
        let node = read.then(|| {
            let op = OpKind::Parameter(Parameter {
                index,
                ty: ty.clone(),
            });
            let id = self.add(op, &[], layer).expect("a parameter has no inputs");
            id.node()
        });
        self.params.push(Param {
            name,
            ty,
            init,
            trainable,
            optimizer_of: None,
            layer,
            node,
        });
        Ok(node.map(|n| TensorId {
            node: n.index() as u32,
            output: 0,
        }))
    }

    /// Checks the invariants every pass must keep: acyclic, inputs in range, edges mirror
    /// inputs, shapes agree with each op's rule. Cheap; run in tests and after each pass.
    pub fn verify(&self) -> Result<(), String> {
        if petgraph::algo::is_cyclic_directed(&self.dag) {
            return Err("graph has a cycle".into());
        }
        for id in self.dag.node_indices() {
            let n = &self.dag[id];
            let mut seen = 0;
            for e in self.dag.edges_directed(id, petgraph::Direction::Incoming) {
                use petgraph::visit::EdgeRef;
                let w = e.weight();
                let t = n
                    .inputs
                    .get(w.slot as usize)
                    .ok_or("edge to a missing slot")?;
                if t.node() != e.source() || t.output != w.output {
                    return Err(format!(
                        "node {} slot {} edge disagrees with its inputs",
                        id.index(),
                        w.slot
                    ));
                }
                seen += 1;
            }
            if seen != n.inputs.len() {
                return Err(format!(
                    "node {} has {} inputs but {seen} edges",
                    id.index(),
                    n.inputs.len()
                ));
            }
            let types: Vec<&TensorType> = n.inputs.iter().map(|&t| self.ty(t)).collect();
            let again = n.op.primitive().infer(&types)?;
            if again != n.outputs {
                return Err(format!(
                    "node {} outputs disagree with its shape rule",
                    id.index()
                ));
            }
        }
        Ok(())
    }
}
