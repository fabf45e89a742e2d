//! The evaluation model: the config's forward graph in eval mode (running statistics, no
//! dropout) at the evaluation batch size, planned and prepared on the run's backend. Validation,
//! `trainer eval` and `trainer predict` all go through it.

use std::sync::Arc;

use crate::backend::Exec;
use crate::backend::gpu::Gpu;
use crate::checkpoint::NamedTensor;
use crate::config::{Checkpointing, Config};
use crate::data::{Loader, Split};
use crate::diag::Diagnostic;
use crate::graph::Mode;
use crate::nn::build_for;
use crate::tensor::TensorId;
use crate::train::metrics::Evaluation;

pub struct EvalModel<'g> {
    exec: Exec<'g>,
    features: TensorId,
    output: TensorId,
    pub batch: usize,
    pub classes: usize,
}

impl<'g> EvalModel<'g> {
    pub fn new(cfg: &Config, gpu: Option<&'g Gpu>, batch: usize) -> Result<Self, Diagnostic> {
        let g = build_for(cfg, batch, Mode::Eval)?;
        let (features, output) = (g.features, g.output);
        let classes = g.ty(output).shape.last().copied().unwrap_or(1);
        let plan = crate::schedule::plan(&g, &Checkpointing::None, Default::default())?;
        let exec =
            Exec::new(gpu, plan, cfg.run.seed).map_err(|e| Diagnostic::new(e.to_string()))?;
        Ok(EvalModel {
            exec,
            features,
            output,
            batch,
            classes,
        })
    }

    /// Sets every parameter and buffer of the model from `tensors`, by PyTorch name. Every one
    /// must be present with its shape; extra tensors (optimizer state) are ignored.
    pub fn load(&mut self, tensors: &[NamedTensor]) -> Result<(), String> {
        load_named(&mut self.exec, &tensors.iter().collect::<Vec<_>>())
    }

    /// Takes the current weights of a training run (same names, same order of model params).
    pub fn copy_from(&mut self, train: &Exec) -> Result<(), String> {
        self.load(&named_tensors(train)?)
    }

    /// One pass over `split` in order; padded rows of the last batch are not counted.
    pub fn evaluate(
        &mut self,
        split: Arc<Split>,
        data: &crate::config::Data,
    ) -> Result<Evaluation, String> {
        let mut eval = Evaluation::new(self.classes);
        let mut loader = Loader::eval(split, data, self.batch).map_err(|e| e.to_string())?;
        while let Some(b) = loader.next() {
            let b = b.map_err(|e| e.to_string())?;
            let logits = self.logits(&b.features)?;
            let labels: Vec<i32> = b.labels.iter().map(|&l| l as i32).collect();
            eval.add_batch(&logits, &labels, b.len)?;
        }
        Ok(eval)
    }

    /// The logits of one full batch of features.
    pub fn logits(&mut self, features: &[f32]) -> Result<Vec<f32>, String> {
        self.exec.feed(self.features, features)?;
        self.exec.step(Default::default())?;
        self.exec.read(self.output)
    }

    pub fn device(&self) -> String {
        self.exec.device()
    }
}

/// Sets every tensor of a prepared plan from `tensors`, by name; each must be there with its
/// shape, and tensors the plan does not have are ignored.
pub fn load_named(exec: &mut Exec, tensors: &[&NamedTensor]) -> Result<(), String> {
    let params = exec.plan().graph.params.clone();
    for (i, p) in params.iter().enumerate() {
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
        exec.set_param(i, &t.data)?;
    }
    Ok(())
}

/// Every parameter, buffer and optimizer state tensor of a prepared plan, with its name.
pub fn named_tensors(exec: &Exec) -> Result<Vec<NamedTensor>, String> {
    let values = exec.params()?;
    Ok(exec
        .plan()
        .graph
        .params
        .iter()
        .zip(values)
        .map(|(p, data)| NamedTensor {
            name: p.name.clone(),
            shape: p.ty.shape.clone(),
            data,
            integer: p.ty.dtype == crate::tensor::DType::I32,
        })
        .collect())
}
