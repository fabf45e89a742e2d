//! The evaluation model: the config's forward graph in eval mode (running statistics, no
//! dropout) at the evaluation batch size, planned and prepared on the run's backend. Validation,
//! `trainer eval` and `trainer predict` all go through it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use crate::backend::gpu::Gpu;
use crate::backend::{Captured, Exec};
use crate::checkpoint::{Checkpoint, NamedTensor};
use crate::config::{Checkpointing, Config};
use crate::data::{Loader, Split};
use crate::diag::Diagnostic;
use crate::graph::summary::grouped;
use crate::graph::{Mode, Param};
use crate::nn::build_for;
use crate::tensor::{TensorId, fmt_shape};
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
        let classes = g.ty(g.output).shape.last().copied().unwrap_or(1);
        let options = crate::schedule::Options::of(cfg);
        let plan = crate::schedule::plan(&g, &Checkpointing::None, options)?;
        // The planned graph's ids: fusion renumbers the nodes after a fused one.
        let (features, output) = (plan.graph.features, plan.graph.output);
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

    /// The tensors a checkpoint must hold for this model (parameters and buffers), by name.
    pub fn params(&self) -> &[Param] {
        &self.exec.plan().graph.params
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

    /// One pass over `split` in order; padded rows of the last batch are not counted. Text
    /// counts positions: the loss and accuracy are over every next-token prediction.
    pub fn evaluate(
        &mut self,
        split: Arc<Split>,
        data: &crate::config::Data,
    ) -> Result<Evaluation, String> {
        let mut eval = Evaluation::new(self.classes);
        let mut loader = Loader::eval(split, data, self.batch).map_err(|e| e.to_string())?;
        // Batches are queued without waiting for the device; their logits come back in order
        // (captures) and are added in that order, so the figures are those of a batch-by-batch
        // loop, without a round trip per batch.
        let mut waiting: VecDeque<(Vec<i32>, usize)> = VecDeque::new();
        while let Some(b) = loader.next() {
            let b = b.map_err(|e| e.to_string())?;
            self.exec.feed(self.features, &b.features)?;
            self.exec.step(Default::default())?;
            self.exec.capture(&[self.output])?;
            // Text: a row per position ([batch, T, vocab] logits are [batch·T, vocab] rows).
            let rows = b.len * b.labels_per_sample;
            waiting.push_back((b.labels.iter().map(|&l| l as i32).collect(), rows));
            let done = self.exec.poll_captures()?;
            add_batches(&mut eval, &mut waiting, done)?;
        }
        let done = self.exec.drain_captures()?;
        add_batches(&mut eval, &mut waiting, done)?;
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

/// Adds the logits of captured batches to `eval` with the labels queued for them, in order.
fn add_batches(
    eval: &mut Evaluation,
    waiting: &mut VecDeque<(Vec<i32>, usize)>,
    done: Vec<Captured>,
) -> Result<(), String> {
    for c in done {
        let (labels, len) = waiting
            .pop_front()
            .ok_or("a capture without its batch (a bug)")?;
        eval.add_batch(&c.values[0], &labels, len)?;
    }
    Ok(())
}

/// Sets every tensor of a prepared plan from `tensors`, by name; each must be there with its
/// shape (`check_fits` says what differs when not), and tensors the plan does not have are
/// ignored.
pub fn load_named(exec: &mut Exec, tensors: &[&NamedTensor]) -> Result<(), String> {
    let params = exec.plan().graph.params.clone();
    fits(&params, tensors, tensors.len())?;
    for (i, p) in params.iter().enumerate() {
        let t = tensors
            .iter()
            .find(|t| t.name == p.name)
            .ok_or_else(|| format!("the checkpoint has no tensor `{}`", p.name))?;
        exec.set_param(i, &t.data)?;
    }
    Ok(())
}

/// Whether a checkpoint's tensors (weights, and optimizer state if `params` has any) fit
/// `params`, a plan's tensors. When not, one line: a checkpoint of a different model (most
/// weights missing) says so with both sizes and a few names on each side; otherwise the
/// missing tensors, the ones the model lacks (a rename shows on both sides) and shape
/// differences (a transposed weight).
pub fn check_fits(params: &[Param], ckpt: &Checkpoint) -> Result<(), String> {
    let tensors: Vec<&NamedTensor> = ckpt.weights.iter().chain(&ckpt.optimizer).collect();
    fits(params, &tensors, ckpt.weights.len())
}

/// `check_fits` over a flat list whose first `weights` tensors are the model's (the rest
/// optimizer state).
fn fits(params: &[Param], tensors: &[&NamedTensor], weights: usize) -> Result<(), String> {
    let by_name: HashMap<&str, &NamedTensor> =
        tensors.iter().map(|t| (t.name.as_str(), *t)).collect();
    let mut missing: Vec<&str> = Vec::new();
    let mut reshaped: Vec<String> = Vec::new();
    for p in params {
        match by_name.get(p.name.as_str()) {
            None => missing.push(&p.name),
            Some(t) if t.shape != p.ty.shape => reshaped.push(format!(
                "`{}` has shape {} in the checkpoint but {} in the model",
                p.name,
                fmt_shape(&t.shape),
                fmt_shape(&p.ty.shape)
            )),
            Some(_) => {}
        }
    }
    if missing.is_empty() && reshaped.is_empty() {
        return Ok(());
    }
    let known: HashSet<&str> = params.iter().map(|p| p.name.as_str()).collect();
    let extra: Vec<&str> = tensors
        .iter()
        .map(|t| t.name.as_str())
        .filter(|n| !known.contains(n))
        .collect();
    // A different model, rather than a changed one, when most of the weights are not there
    // as they are in the model (optimizer state aside: a changed optimizer is not a new model).
    let model: Vec<&Param> = params.iter().filter(|p| p.optimizer_of.is_none()).collect();
    let model_matched = model
        .iter()
        .filter(|p| {
            by_name
                .get(p.name.as_str())
                .is_some_and(|t| t.shape == p.ty.shape)
        })
        .count();
    let mut problems: Vec<String> = Vec::new();
    if !missing.is_empty() {
        problems.push(format!("it has no {}", names(&missing)));
    }
    if !extra.is_empty() && (!missing.is_empty() || !reshaped.is_empty()) {
        // Beside missing names, a rename shows here.
        problems.push(format!(
            "it has {}, which the model does not",
            names(&extra)
        ));
    }
    let shapes = reshaped.len();
    problems.extend(reshaped.into_iter().take(SHAPES_SHOWN));
    if shapes > SHAPES_SHOWN {
        problems.push(format!("{} more differ in shape", shapes - SHAPES_SHOWN));
    }
    if model_matched * 2 < model.len() {
        let size = |shapes: &mut dyn Iterator<Item = &Vec<usize>>| -> u64 {
            shapes.map(|s| s.iter().product::<usize>() as u64).sum()
        };
        let ckpt_weights = &tensors[..weights.min(tensors.len())];
        return Err(format!(
            "belongs to a different model: it holds {} tensors ({} parameters), this model {} ({}); {}",
            ckpt_weights.len(),
            grouped(size(&mut ckpt_weights.iter().map(|t| &t.shape))),
            model.len(),
            grouped(size(&mut model.iter().map(|p| &p.ty.shape))),
            problems.join("; ")
        ));
    }
    Err(format!("does not fit this model: {}", problems.join("; ")))
}

/// Names quoted in a mismatch message before "(+N more)", and shape differences shown.
const NAMES_SHOWN: usize = 3;
const SHAPES_SHOWN: usize = 2;

/// "`a`, `b`, `c` (+4 more)".
fn names(list: &[&str]) -> String {
    let shown: Vec<String> = list
        .iter()
        .take(NAMES_SHOWN)
        .map(|n| format!("`{n}`"))
        .collect();
    match list.len() - shown.len() {
        0 => shown.join(", "),
        more => format!("{} (+{more} more)", shown.join(", ")),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// The pipelined pass (batches queued, logits back through captures) gives exactly the
    /// figures of a batch-by-batch loop of blocking reads, on the CPU and on the GPU adapter,
    /// with a last batch cut short.
    #[test]
    fn a_pipelined_pass_gives_the_figures_of_a_batch_by_batch_loop() {
        let sets = [
            "data.samples=37".to_string(),
            "data.val_split=0.5".to_string(),
        ];
        let path = Path::new("tests/configs/good/resnet_tiny.toml");
        let loaded = crate::config::load(path, &sets);
        let cfg = loaded
            .result
            .unwrap_or_else(|e| panic!("{}", e.render(&loaded.sources)));
        let splits =
            crate::data::open(&cfg.data, Path::new("."), &cfg.model.input.shape, 1).unwrap();
        assert!(
            !splits.val.len().is_multiple_of(4),
            "a last batch cut short"
        );
        let gpu = crate::backend::gpu::test_gpu();
        for gpu in [None].into_iter().chain(gpu.map(Some)) {
            let mut m = EvalModel::new(&cfg, gpu, 4).unwrap();
            let piped = m.evaluate(splits.val.clone(), &cfg.data).unwrap();
            let mut one_by_one = Evaluation::new(m.classes);
            let mut loader = Loader::eval(splits.val.clone(), &cfg.data, 4).unwrap();
            while let Some(b) = loader.next() {
                let b = b.unwrap();
                let labels: Vec<i32> = b.labels.iter().map(|&l| l as i32).collect();
                one_by_one
                    .add_batch(&m.logits(&b.features).unwrap(), &labels, b.len)
                    .unwrap();
            }
            assert_eq!(piped.count(), splits.val.len());
            assert_eq!(
                piped.loss().map(f64::to_bits),
                one_by_one.loss().map(f64::to_bits)
            );
            assert_eq!(piped.confusion(), one_by_one.confusion());
            for i in 0..piped.count() {
                assert_eq!(piped.logits_of(i), one_by_one.logits_of(i));
            }
        }
    }
}
