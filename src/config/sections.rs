//! The non-model sections of a config: run, data, loss, optimizer, schedule, train, log.
//! Each is a `deny_unknown_fields` struct; sections whose keys depend on `kind` are read by
//! [`super::tagged`] into one struct per kind, so a key that belongs to another kind is an error.

use serde::{Deserialize, Serialize};

use super::values::{Bytes, Count, Finite, Fraction, NonNegFloat, Positive, PositiveFloat};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Run {
    /// Names the run directory runs/<name>/...
    #[serde(default = "default_name")]
    pub name: String,
    /// Seeds parameter initialisation, data order, augmentation and dropout.
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub device: Device,
    /// Which fusion passes plan the step (schedule/fuse/): fewer launches, the same arithmetic.
    #[serde(default)]
    pub fusion: Fusion,
}

/// One fusion pass (schedule/fuse/), as `run.fusion` names it.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum FusionPass {
    /// batchnorm + residual add + relu at a block's end.
    Residual,
    /// An activation into the op before it (batchnorm + relu).
    Activation,
    /// relu's gradient (and a gradient sum before it) into batchnorm's gradient.
    NormGrad,
    /// A linear layer's bias add and activation into its matmul.
    MatmulBias,
    /// Elementwise chains as one launch.
    Chains,
    /// One multi-tensor launch per kind of update.
    MultiTensor,
}

impl FusionPass {
    pub const ALL: [FusionPass; 6] = [
        FusionPass::Residual,
        FusionPass::Activation,
        FusionPass::NormGrad,
        FusionPass::MatmulBias,
        FusionPass::Chains,
        FusionPass::MultiTensor,
    ];
}

/// `run.fusion`: `true` (every pass, the default), `false` (none), or a list of the passes to
/// run, such as `["multi_tensor", "chains"]` (to find which one changes a driver's rounding).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fusion([bool; FusionPass::ALL.len()]);

impl Fusion {
    pub const ALL: Fusion = Fusion([true; FusionPass::ALL.len()]);
    pub const NONE: Fusion = Fusion([false; FusionPass::ALL.len()]);

    pub fn has(self, pass: FusionPass) -> bool {
        self.0[pass as usize]
    }

    pub fn any(self) -> bool {
        self != Fusion::NONE
    }

    /// Only `passes`.
    pub fn only(passes: &[FusionPass]) -> Fusion {
        let mut f = Fusion::NONE;
        for &p in passes {
            f.0[p as usize] = true;
        }
        f
    }
}

impl Default for Fusion {
    fn default() -> Self {
        Fusion::ALL
    }
}

impl Serialize for Fusion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match *self {
            Fusion::ALL => s.serialize_bool(true),
            Fusion::NONE => s.serialize_bool(false),
            f => {
                let on: Vec<FusionPass> =
                    FusionPass::ALL.into_iter().filter(|&p| f.has(p)).collect();
                on.serialize(s)
            }
        }
    }
}

impl<'de> Deserialize<'de> for Fusion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Fusion;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("true, false, or a list of fusion passes")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Fusion, E> {
                Ok(if v { Fusion::ALL } else { Fusion::NONE })
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Fusion, A::Error> {
                let mut passes = Vec::new();
                while let Some(p) = seq.next_element::<FusionPass>()? {
                    passes.push(p);
                }
                Ok(Fusion::only(&passes))
            }
        }
        d.deserialize_any(V)
    }
}

fn default_name() -> String {
    "run".into()
}

impl Default for Run {
    fn default() -> Self {
        Run {
            name: default_name(),
            seed: 0,
            device: Device::Auto,
            fusion: Fusion::ALL,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    #[default]
    Auto,
    Gpu,
    Cpu,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Data {
    pub dataset: Dataset,
    /// Where the files are; the shipped datasets default to datasets/<name>/.
    pub path: Option<String>,
    #[serde(default = "default_batch")]
    pub batch_size: Positive,
    /// Batch size for validation and `trainer eval` (default: batch_size).
    pub eval_batch_size: Option<Positive>,
    /// Use at most this many training samples.
    pub train_limit: Option<Positive>,
    /// Use at most this many validation samples.
    pub val_limit: Option<Positive>,
    /// Hold out this fraction of the training set for validation (0: validate on the test set).
    #[serde(default = "zero_fraction")]
    pub val_split: Fraction,
    #[serde(default = "yes")]
    pub shuffle: bool,
    #[serde(default)]
    pub augment: Vec<Augment>,
    pub normalize: Option<Normalize>,
    /// Number of classes, for `synthetic` and `image-folder` data.
    pub classes: Option<Positive>,
    /// Number of samples, for `synthetic` data.
    pub samples: Option<Positive>,
    /// How `text` data becomes token ids (default `char`).
    pub tokenizer: Option<Tokenizer>,
    /// Tokens per `text` window: the model input is `[block_size]` i32 ids.
    pub block_size: Option<Positive>,
}

/// How a run's speed is counted (progress lines, `trainer bench`): images a second, or for
/// `text` data tokens a second (windows a second × `block_size`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Throughput {
    /// "img/s" or "tok/s".
    pub short: &'static str,
    /// "images/s" or "tokens/s".
    pub long: &'static str,
    /// Units per sample: 1 image, or `block_size` tokens.
    pub per_sample: usize,
}

impl Throughput {
    pub const IMAGES: Throughput = Throughput {
        short: "img/s",
        long: "images/s",
        per_sample: 1,
    };
    /// `samples` a second in this unit.
    pub fn of(self, samples: f64) -> f64 {
        samples * self.per_sample as f64
    }
}

impl Data {
    pub fn throughput(&self) -> Throughput {
        match (self.dataset, self.block_size) {
            (Dataset::Text, Some(b)) => Throughput {
                short: "tok/s",
                long: "tokens/s",
                per_sample: b.0,
            },
            _ => Throughput::IMAGES,
        }
    }
}

/// `data.tokenizer` of `text` data.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Tokenizer {
    /// One id per Unicode character of the text, in sorted order of the characters it holds.
    #[default]
    Char,
    /// One id per byte: 256 ids, any file.
    Byte,
}

fn default_batch() -> Positive {
    Positive(128)
}
fn zero_fraction() -> Fraction {
    Fraction(0.0)
}
fn yes() -> bool {
    true
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Dataset {
    FashionMnist,
    Mnist,
    Cifar10,
    Cifar100,
    /// IDX files (gz or raw) at `path`.
    Idx,
    /// root/<class>/*.png|jpg at `path`.
    ImageFolder,
    /// Random separable data of the model's input shape.
    Synthetic,
    /// A UTF-8 file or a folder of files at `path`: windows of token ids for a language model.
    Text,
}

impl Dataset {
    /// Per-sample input shape and class count of the datasets whose layout is fixed.
    pub fn known_layout(self) -> Option<(Vec<usize>, usize)> {
        match self {
            Dataset::FashionMnist | Dataset::Mnist => Some((vec![1, 28, 28], 10)),
            Dataset::Cifar10 => Some((vec![3, 32, 32], 10)),
            Dataset::Cifar100 => Some((vec![3, 32, 32], 100)),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Augment {
    /// Pad by `padding` on each side, then crop a random `size`×`size` window.
    RandomCrop {
        size: Positive,
        #[serde(default = "zero")]
        padding: Count,
    },
    /// Flip left-right with probability 0.5.
    Hflip,
}

fn zero() -> Count {
    Count(0)
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Normalize {
    pub mean: Vec<Finite>,
    pub std: Vec<PositiveFloat>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Loss {
    pub kind: LossKind,
    /// Cross entropy only: mix the one-hot target with the uniform distribution.
    #[serde(default = "zero_fraction")]
    pub label_smoothing: Fraction,
    /// Cross entropy only: positions with this label count neither in the loss nor its mean
    /// (PyTorch's `ignore_index`; padding in sequences).
    #[serde(default)]
    pub ignore_index: Option<i32>,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    CrossEntropy,
    Mse,
}

/// torch.optim.lr_scheduler's defaults: StepLR/MultiStepLR gamma, OneCycleLR pct_start.
fn tenth() -> PositiveFloat {
    PositiveFloat(0.1)
}
fn pct_start() -> Fraction {
    Fraction(0.3)
}
fn zero_nonneg() -> NonNegFloat {
    NonNegFloat(0.0)
}

/// The learning-rate schedule. Warmup (linear from 0) combines with any kind.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    #[serde(default)]
    pub kind: ScheduleKind,
    /// Linear warmup over this many epochs (fractions allowed).
    #[serde(default = "zero_nonneg")]
    pub warmup_epochs: NonNegFloat,
    /// Linear warmup over this many optimizer steps, as nanoGPT's `get_lr`
    /// (`lr × (step + 1) / (warmup_steps + 1)`); not with `warmup_epochs`.
    pub warmup_steps: Option<Count>,
    /// step: multiply the LR by `gamma` every `step_size` epochs.
    pub step_size: Option<Positive>,
    /// multistep: multiply the LR by `gamma` at each of these epochs.
    pub milestones: Option<Vec<Positive>>,
    /// step, multistep: the decay factor.
    #[serde(default = "tenth")]
    pub gamma: PositiveFloat,
    /// cosine: the LR reached at the end.
    #[serde(default = "zero_nonneg")]
    pub min_lr: NonNegFloat,
    /// onecycle: the peak LR (default: optimizer.lr).
    pub max_lr: Option<PositiveFloat>,
    /// onecycle: fraction of the run spent increasing the LR.
    #[serde(default = "pct_start")]
    pub pct_start: Fraction,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            kind: ScheduleKind::Constant,
            warmup_epochs: zero_nonneg(),
            warmup_steps: None,
            step_size: None,
            milestones: None,
            gamma: tenth(),
            min_lr: zero_nonneg(),
            max_lr: None,
            pct_start: pct_start(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    #[default]
    Constant,
    Step,
    Multistep,
    Cosine,
    Onecycle,
}

impl ScheduleKind {
    /// The [schedule] keys that belong to one kind or another.
    pub const KIND_KEYS: &[&str] = &[
        "step_size",
        "milestones",
        "gamma",
        "min_lr",
        "max_lr",
        "pct_start",
    ];
    /// The kind-specific keys this kind reads.
    pub fn keys(self) -> &'static [&'static str] {
        match self {
            ScheduleKind::Constant => &[],
            ScheduleKind::Step => &["step_size", "gamma"],
            ScheduleKind::Multistep => &["milestones", "gamma"],
            ScheduleKind::Cosine => &["min_lr"],
            ScheduleKind::Onecycle => &["max_lr", "pct_start"],
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Train {
    #[serde(default = "one")]
    pub epochs: Positive,
    /// Stop after this many optimizer steps even if epochs remain.
    pub max_steps: Option<Positive>,
    #[serde(default)]
    pub checkpointing: Checkpointing,
    /// How often to save: "1 epoch", "500 steps".
    #[serde(default = "default_save_every")]
    pub save_every: String,
    /// How many recent checkpoints to keep (the best is kept too).
    #[serde(default = "three")]
    pub keep: Count,
    #[serde(default)]
    pub on_nonfinite: OnNonfinite,
}

fn one() -> Positive {
    Positive(1)
}
fn three() -> Count {
    Count(3)
}
fn default_save_every() -> String {
    "1 epoch".into()
}

impl Default for Train {
    fn default() -> Self {
        Train {
            epochs: one(),
            max_steps: None,
            checkpointing: Checkpointing::None,
            save_every: default_save_every(),
            keep: three(),
            on_nonfinite: OnNonfinite::Stop,
        }
    }
}

/// Gradient checkpointing: which activations to recompute in the backward pass.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Checkpointing {
    #[default]
    None,
    Blocks,
    Sqrt,
    MemoryBudget(Bytes),
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnNonfinite {
    #[default]
    Stop,
    SkipStep,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    /// Parent of the run directories.
    #[serde(default = "default_dir")]
    pub dir: String,
    /// Log training metrics every this many steps.
    #[serde(default = "fifty")]
    pub every_steps: Positive,
    #[serde(default = "yes")]
    pub tensorboard: bool,
    #[serde(default = "yes")]
    pub csv: bool,
    #[serde(default)]
    pub progress: Progress,
}

fn default_dir() -> String {
    "runs".into()
}
fn fifty() -> Positive {
    Positive(50)
}

impl Default for Log {
    fn default() -> Self {
        Log {
            dir: default_dir(),
            every_steps: fifty(),
            tensorboard: true,
            csv: true,
            progress: Progress::Auto,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Progress {
    /// A bar on a terminal, plain lines otherwise.
    #[default]
    Auto,
    Bar,
    Plain,
    Off,
}
