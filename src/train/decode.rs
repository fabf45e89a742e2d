//! The decode-step model (nn/decode.rs) planned and prepared on a backend, one sequence at a
//! time: `push` runs the model for one token at its position, caching that position's keys and
//! values on the device, and `logits` reads the next-token logits. `trainer generate` drives it.

use crate::backend::Exec;
use crate::backend::gpu::Gpu;
use crate::checkpoint::NamedTensor;
use crate::config::{Checkpointing, Config};
use crate::diag::Diagnostic;
use crate::graph::Param;
use crate::ops::OpKind;
use crate::tensor::TensorId;

pub struct DecodeModel<'g> {
    exec: Exec<'g>,
    features: TensorId,
    position: TensorId,
    output: TensorId,
    /// The most positions a sequence may have (the model input's length, `block_size`).
    pub positions: usize,
    pub classes: usize,
    /// Indices of the plan's params that are caches (not in a checkpoint).
    caches: Vec<usize>,
}

impl<'g> DecodeModel<'g> {
    /// The decode-step model of `cfg` at batch size 1, or why it has none (no causal
    /// attention, not a model of token ids).
    pub fn new(cfg: &Config, gpu: Option<&'g Gpu>) -> Result<Self, Diagnostic> {
        let d = crate::nn::build_decode(cfg, 1)?;
        let classes = d
            .graph
            .ty(d.graph.output)
            .shape
            .last()
            .copied()
            .unwrap_or(1);
        let options = crate::schedule::Options::of(cfg);
        let plan = crate::schedule::plan(&d.graph, &Checkpointing::None, options)?;
        // The planned graph's ids: fusion renumbers nodes.
        let g = &plan.graph;
        let (features, output) = (g.features, g.output);
        let position = g
            .dag
            .node_indices()
            .find(|&id| matches!(&g.dag[id].op, OpKind::Input(i) if i.name == "position"))
            .map(|id| TensorId::of(id, 0))
            .ok_or_else(|| Diagnostic::new("the decode plan lost its position input (a bug)"))?;
        if g.ty(output).shape != [1, 1, classes] {
            return Err(Diagnostic::new(format!(
                "the model's output for one position is {}, not one row of logits: it mixes \
                 positions other than through attention",
                crate::tensor::fmt_shape(&g.ty(output).shape)
            )));
        }
        let exec =
            Exec::new(gpu, plan, cfg.run.seed).map_err(|e| Diagnostic::new(e.to_string()))?;
        Ok(DecodeModel {
            exec,
            features,
            position,
            output,
            positions: d.positions,
            classes,
            caches: d.caches,
        })
    }

    /// The tensors a checkpoint must hold for this model (the caches are not among them).
    pub fn weights(&self) -> Vec<Param> {
        (self.exec.plan().graph.params.iter().enumerate())
            .filter(|(i, _)| !self.caches.contains(i))
            .map(|(_, p)| p.clone())
            .collect()
    }

    /// Sets every weight from `tensors` by name; the caches keep their values.
    pub fn load(&mut self, tensors: &[NamedTensor]) -> Result<(), String> {
        let params = self.exec.plan().graph.params.clone();
        for (i, p) in params.iter().enumerate() {
            if self.caches.contains(&i) {
                continue;
            }
            let t = tensors
                .iter()
                .find(|t| t.name == p.name)
                .ok_or_else(|| format!("the checkpoint has no tensor `{}`", p.name))?;
            if t.shape != p.ty.shape {
                return Err(format!(
                    "`{}` has shape {} in the checkpoint but {} in the model",
                    p.name,
                    crate::tensor::fmt_shape(&t.shape),
                    crate::tensor::fmt_shape(&p.ty.shape)
                ));
            }
            self.exec.set_param(i, &t.data)?;
        }
        Ok(())
    }

    /// Runs the model for `token` at `position` (< `positions`): caches its keys and values in
    /// row `position`, after which `logits` gives the next token's. Positions from 0 up to it
    /// must have been pushed, in order, since the cache was last refilled from 0; the rows past
    /// it are never read, so a refill needs no reset. On the GPU the step is queued, not
    /// waited for.
    pub fn push(&mut self, token: u32, position: usize) -> Result<(), String> {
        if position >= self.positions {
            return Err(format!(
                "position {position} is past the model's {} positions",
                self.positions
            ));
        }
        self.exec.feed(self.features, &[token as f32])?;
        self.exec.feed(self.position, &[position as f32])?;
        self.exec.step(Default::default())
    }

    /// The logits after the last `push`: [classes].
    pub fn logits(&self) -> Result<Vec<f32>, String> {
        self.exec.read(self.output)
    }

    pub fn device(&self) -> String {
        self.exec.device()
    }
}
