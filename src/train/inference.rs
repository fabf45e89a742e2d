//! `trainer eval` and `trainer predict`: a checkpoint's weights in the evaluation model.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::backend::gpu::Gpu;
use crate::checkpoint::{self, NamedTensor, Part};
use crate::config::Config;
use crate::graph::Param;
use crate::train::evaluate::{EvalModel, check_fits};
use crate::train::metrics::top_k;

#[derive(Debug, Serialize)]
pub struct ClassScore {
    pub class: String,
    pub accuracy: f64,
    pub samples: u64,
}

#[derive(Debug, Serialize)]
pub struct EvalReport {
    pub checkpoint: PathBuf,
    pub split: String,
    pub data: String,
    pub device: String,
    pub samples: u64,
    pub loss: f64,
    pub accuracy: f64,
    pub per_class: Vec<ClassScore>,
    /// `confusion[true][predicted]`, in the order of `per_class`.
    pub confusion: Vec<Vec<u64>>,
}

impl EvalReport {
    pub fn table(&self) -> String {
        let mut s = format!(
            "{} on the {} split of {} ({}): loss {:.4}, accuracy {:.2}% of {} samples\n\nper class:\n",
            self.checkpoint.display(),
            self.split,
            self.data,
            self.device,
            self.loss,
            100.0 * self.accuracy,
            self.samples
        );
        let width = self
            .per_class
            .iter()
            .map(|c| c.class.len())
            .max()
            .unwrap_or(5);
        for c in &self.per_class {
            s += &format!(
                "  {:<width$}  {:6.2}%  ({} samples)\n",
                c.class,
                100.0 * c.accuracy,
                c.samples
            );
        }
        s += "\nconfusion matrix (rows: true class, columns: predicted):\n";
        let cell = self
            .confusion
            .iter()
            .flatten()
            .map(|n| n.to_string().len())
            .max()
            .unwrap_or(1)
            .max(3);
        for (c, row) in self.per_class.iter().zip(&self.confusion) {
            s += &format!("  {:<width$} ", c.class);
            for n in row {
                s += &format!(" {n:>cell$}");
            }
            s += "\n";
        }
        s
    }
}

/// The model of `cfg` with the weights of the checkpoint `path` stands for (a run directory,
/// its checkpoints/, one checkpoint directory or a .safetensors file), found by
/// `checkpoint::resolve`: a checkpoint this model cannot take is passed over like a corrupt
/// one, and each one passed over is a warning on stderr. Returns the checkpoint used.
fn model<'g>(
    cfg: &Config,
    gpu: Option<&'g Gpu>,
    path: &Path,
) -> Result<(EvalModel<'g>, PathBuf), String> {
    let batch = cfg
        .data
        .eval_batch_size
        .map_or(cfg.data.batch_size.0, |b| b.0);
    model_at(cfg, gpu, path, batch)
}

/// `model` at batch size `batch`.
pub fn model_at<'g>(
    cfg: &Config,
    gpu: Option<&'g Gpu>,
    path: &Path,
    batch: usize,
) -> Result<(EvalModel<'g>, PathBuf), String> {
    let mut m = EvalModel::new(cfg, gpu, batch).map_err(|d| d.message)?;
    let (weights, at) = weights_for(m.params(), path)?;
    m.load(&weights)
        .map_err(|e| format!("{}: {e}", at.display()))?;
    Ok((m, at))
}

/// The weights of the checkpoint `path` stands for that fit a model of `params` (see `model`),
/// and the checkpoint's path; each one passed over is a warning on stderr.
pub fn weights_for(params: &[Param], path: &Path) -> Result<(Vec<NamedTensor>, PathBuf), String> {
    let found = checkpoint::resolve(path, Part::Weights, &mut |c| check_fits(params, c))
        .map_err(|e| e.to_string())?;
    for w in &found.warnings {
        crate::errln!("warning: {w}");
    }
    Ok((found.checkpoint.weights, found.path))
}

pub fn evaluate(
    cfg: &Config,
    config_path: &Path,
    gpu: Option<&Gpu>,
    checkpoint: &Path,
    val: bool,
) -> Result<EvalReport, String> {
    let (mut m, at) = model(cfg, gpu, checkpoint)?;
    let dir = config_path.parent().unwrap_or(Path::new("."));
    let splits = crate::data::open_for(&cfg.data, dir, &cfg.model.input, cfg.run.seed)
        .map_err(|e| e.to_string())?;
    if let Some(v) = &splits.vocab {
        let g =
            crate::nn::build_for(cfg, m.batch, crate::graph::Mode::Eval).map_err(|d| d.message)?;
        crate::data::text::check_model(&g, v, &splits.source).map_err(|d| d.message)?;
        if !val {
            return Err(format!(
                "{}: text data has no test split; evaluate the held-out tail with --split val",
                splits.source
            ));
        }
    }
    let split = if val { &splits.val } else { &splits.test };
    let names = split.class_names();
    let e = m.evaluate(split.clone(), &cfg.data)?;
    let confusion = e.confusion().to_vec();
    let per_class = names
        .iter()
        .enumerate()
        .map(|(c, name)| {
            let samples: u64 = confusion[c].iter().sum();
            ClassScore {
                class: name.clone(),
                accuracy: if samples == 0 {
                    0.0
                } else {
                    confusion[c][c] as f64 / samples as f64
                },
                samples,
            }
        })
        .collect();
    Ok(EvalReport {
        checkpoint: at,
        split: if val { "val" } else { "test" }.into(),
        data: splits.source.clone(),
        device: m.device(),
        samples: e.count() as u64,
        loss: e.loss().unwrap_or(f64::NAN),
        accuracy: e.accuracy().unwrap_or(0.0),
        per_class,
        confusion,
    })
}

#[derive(Debug, Serialize)]
pub struct Prediction {
    pub input: String,
    /// Best first: (class, probability).
    pub top: Vec<(String, f64)>,
}

pub fn predict(
    cfg: &Config,
    config_path: &Path,
    gpu: Option<&Gpu>,
    checkpoint: &Path,
    inputs: &[PathBuf],
    k: usize,
) -> Result<Vec<Prediction>, String> {
    if cfg.data.dataset == crate::config::Dataset::Text {
        return Err(
            "predict classifies image files; a model of text data predicts the next token of \
             a prompt instead (trainer eval --split val scores it on the held-out text)"
                .into(),
        );
    }
    let samples = crate::data::read_inputs(inputs, &cfg.data, &cfg.model.input.shape)
        .map_err(|e| e.to_string())?;
    let (mut m, _) = model(cfg, gpu, checkpoint)?;
    let dir = config_path.parent().unwrap_or(Path::new("."));
    let names = crate::data::class_names(&cfg.data, dir, m.classes);
    let per = cfg.model.input.shape.iter().product::<usize>();
    let mut out = Vec::with_capacity(samples.len());
    for chunk in samples.chunks(m.batch) {
        let mut features = vec![0.0f32; m.batch * per];
        for (i, (_, x)) in chunk.iter().enumerate() {
            features[i * per..(i + 1) * per].copy_from_slice(x);
        }
        let logits = m.logits(&features)?;
        for (i, (name, _)) in chunk.iter().enumerate() {
            let row = &logits[i * m.classes..(i + 1) * m.classes];
            let top = top_k(row, k)
                .into_iter()
                .map(|(c, p)| (names[c].clone(), p))
                .collect();
            out.push(Prediction {
                input: name.clone(),
                top,
            });
        }
    }
    Ok(out)
}

pub fn predictions_table(preds: &[Prediction]) -> String {
    let mut s = String::new();
    for p in preds {
        let top: Vec<String> = p
            .top
            .iter()
            .map(|(c, prob)| format!("{c} {:.1}%", 100.0 * prob))
            .collect();
        s += &format!("{}: {}\n", p.input, top.join(", "));
    }
    s
}
