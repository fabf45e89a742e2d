//! Learning-rate schedules as pure functions of the optimizer step.
//!
//! PyTorch's schedulers are stateful objects stepped once per epoch or per batch; ours is a
//! closed form `lr_at(step)`, so a resumed run needs only the step count (no scheduler state
//! in the checkpoint) and the LR of any step can be tested or printed before training.
//!
//! Notation used in the formulas below:
//! - `step`: the 0-based optimizer step (the first step uses `lr_at(0)`);
//! - `base`: `[optimizer] lr`; `spe`: optimizer steps per epoch; `T`: the run's total steps;
//! - `W = round(warmup_epochs × spe)` (halves round away from zero): the warmup steps;
//! - `t = step − W`: the step of the main schedule, which starts after the warmup;
//! - `e = floor(t / spe)`: the epoch of the main schedule (for the epoch-based kinds).
//!
//! Warmup in epochs (`warmup_epochs`) is PyTorch's `SequentialLR([LinearLR(opt,
//! start_factor=1/W, end_factor=1, total_iters=W−1), main], milestones=[W])`: for `step < W`,
//! `lr = main(0) × (step + 1) / W`, rising linearly to the main schedule's first LR, which
//! step `W` then uses; after it the main schedule runs on `t`, as a scheduler that
//! SequentialLR hands over to starts counting from 0.
//!
//! Warmup in steps (`warmup_steps = W`) is nanoGPT's `get_lr`: for `step < W`,
//! `lr = main(0) × (step + 1) / (W + 1)`, so step `W` is the first to use the full LR. With
//! `cosine`, `T` is nanoGPT's `lr_decay_iters`: the LR reaches `min_lr` at step `T` and stays
//! there, `T` being the run's length (`train.max_steps` when it ends the run).

use crate::config::{Schedule, ScheduleKind};

/// The LR of every optimizer step of one run; see the module docs for the notation.
#[derive(Clone, Debug)]
pub struct LrSchedule {
    main: Main,
    base_lr: f64,
    steps_per_epoch: usize,
    total_steps: usize,
    warmup_steps: usize,
    /// What warmup step `step` multiplies `main(0)` by `step + 1` over: `W` (epochs, as
    /// torch's LinearLR) or `W + 1` (steps, as nanoGPT).
    warmup_denominator: usize,
}

/// The schedule after warmup, with everything it needs precomputed.
#[derive(Clone, Debug)]
enum Main {
    /// `lr = base`.
    Constant,
    /// StepLR: `lr = base × gamma^floor(e / step_size)`.
    Step { step_size: usize, gamma: f64 },
    /// MultiStepLR: `lr = base × gamma^(number of milestones m with m ≤ e)`.
    MultiStep { milestones: Vec<usize>, gamma: f64 },
    /// CosineAnnealingLR per step: `lr = min + (base − min)(1 + cos(π t / t_max)) / 2`,
    /// with `t_max = T − W` and `t` clamped to `t_max`.
    Cosine { min_lr: f64, t_max: usize },
    /// OneCycleLR (cos annealing, two phases); see [`one_cycle`].
    OneCycle {
        max_lr: f64,
        initial_lr: f64,
        min_lr: f64,
        /// `float(pct_start × total) − 1`: the step at which the LR peaks (may be fractional).
        end_up: f64,
        /// `total − 1`: the step at which the LR reaches `min_lr`.
        end_down: f64,
    },
}

/// OneCycleLR's defaults (`div_factor`, `final_div_factor`), which the config does not expose.
const DIV_FACTOR: f64 = 25.0;
const FINAL_DIV_FACTOR: f64 = 1e4;

impl LrSchedule {
    /// `base_lr`: `[optimizer] lr`. `steps_per_epoch` and `total_steps` (epochs ×
    /// steps_per_epoch, or `train.max_steps` if smaller) are known before step 1.
    ///
    /// Errors (as messages for the caller to attach to the config): `step` without
    /// `step_size`, `multistep` without milestones, `onecycle` with `max_lr` below the
    /// optimizer's LR, and an empty run or epoch.
    pub fn new(
        cfg: &Schedule,
        base_lr: f64,
        steps_per_epoch: usize,
        total_steps: usize,
    ) -> Result<LrSchedule, String> {
        if !(base_lr.is_finite() && base_lr > 0.0) {
            return Err(format!("the learning rate must be positive, not {base_lr}"));
        }
        if steps_per_epoch == 0 {
            return Err("an epoch has no optimizer steps (is the training set empty?)".into());
        }
        if total_steps == 0 {
            return Err("the run has no optimizer steps".into());
        }
        let (warmup_steps, warmup_denominator) = match cfg.warmup_steps {
            Some(w) if cfg.warmup_epochs.0 > 0.0 => {
                return Err(format!(
                    "warmup_steps = {} and warmup_epochs = {} are both set",
                    w.0, cfg.warmup_epochs.0
                ));
            }
            Some(w) => (w.0, w.0 + 1),
            None => {
                let w = (cfg.warmup_epochs.0 * steps_per_epoch as f64).round();
                if !w.is_finite() || w > usize::MAX as f64 {
                    return Err(format!(
                        "warmup_epochs = {} is too large",
                        cfg.warmup_epochs.0
                    ));
                }
                (w as usize, w as usize)
            }
        };
        let main_steps = total_steps.saturating_sub(warmup_steps);
        let gamma = cfg.gamma.0;
        let main = match cfg.kind {
            ScheduleKind::Constant => Main::Constant,
            ScheduleKind::Step => match cfg.step_size {
                Some(s) => Main::Step {
                    step_size: s.0,
                    gamma,
                },
                None => return Err("schedule kind \"step\" needs `step_size`".into()),
            },
            ScheduleKind::Multistep => match &cfg.milestones {
                Some(m) if !m.is_empty() => {
                    let mut milestones: Vec<usize> = m.iter().map(|p| p.0).collect();
                    milestones.sort_unstable();
                    Main::MultiStep { milestones, gamma }
                }
                _ => return Err("schedule kind \"multistep\" needs `milestones`".into()),
            },
            ScheduleKind::Cosine => Main::Cosine {
                min_lr: cfg.min_lr.0,
                t_max: main_steps,
            },
            ScheduleKind::Onecycle => {
                let max_lr = cfg.max_lr.map_or(base_lr, |m| m.0);
                if max_lr < base_lr {
                    return Err(format!(
                        "onecycle max_lr = {max_lr} is below [optimizer] lr = {base_lr} \
                         (lr is the peak unless max_lr is given)"
                    ));
                }
                let initial_lr = max_lr / DIV_FACTOR;
                Main::OneCycle {
                    max_lr,
                    initial_lr,
                    min_lr: initial_lr / FINAL_DIV_FACTOR,
                    end_up: cfg.pct_start.0 * main_steps as f64 - 1.0,
                    end_down: main_steps as f64 - 1.0,
                }
            }
        };
        Ok(LrSchedule {
            main,
            base_lr,
            steps_per_epoch,
            total_steps,
            warmup_steps,
            warmup_denominator,
        })
    }

    /// The LR used by optimizer step `step` (0-based: the first step uses `lr_at(0)`).
    /// Steps past the end keep the schedule's final value (cosine: `min_lr`; onecycle: its
    /// minimum) rather than extrapolating, since max_steps or a resume may overshoot by one.
    pub fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            // (step + 1) / W (epochs): step W − 1, the last warmup step, reaches the main
            // schedule's start exactly; (step + 1) / (W + 1) (steps): step W does, as in
            // nanoGPT. Step 0 is not 0 either way, so no step is wasted on a zero LR.
            return self.main_lr(0) * (step + 1) as f64 / self.warmup_denominator as f64;
        }
        self.main_lr(step - self.warmup_steps)
    }

    /// Steps of linear warmup (`warmup_steps`, or `round(warmup_epochs × steps_per_epoch)`).
    pub fn warmup_steps(&self) -> usize {
        self.warmup_steps
    }

    /// The run's total optimizer steps, as given to [`LrSchedule::new`].
    pub fn total_steps(&self) -> usize {
        self.total_steps
    }

    /// The main schedule at its own step `t` (0 = the first step after warmup).
    fn main_lr(&self, t: usize) -> f64 {
        let base = self.base_lr;
        let epoch = t / self.steps_per_epoch;
        match &self.main {
            Main::Constant => base,
            Main::Step { step_size, gamma } => base * powi(*gamma, epoch / step_size),
            Main::MultiStep { milestones, gamma } => {
                // bisect_right(milestones, epoch), as MultiStepLR's closed form.
                let passed = milestones.partition_point(|&m| m <= epoch);
                base * powi(*gamma, passed)
            }
            Main::Cosine { min_lr, t_max } => {
                if *t_max == 0 {
                    return base;
                }
                let t = t.min(*t_max) as f64;
                min_lr
                    + (base - min_lr) * (1.0 + (std::f64::consts::PI * t / *t_max as f64).cos())
                        / 2.0
            }
            Main::OneCycle {
                max_lr,
                initial_lr,
                min_lr,
                end_up,
                end_down,
            } => one_cycle(t, *initial_lr, *max_lr, *min_lr, *end_up, *end_down),
        }
    }
}

/// `gamma^n` for any `n` (`f64::powi` takes an i32).
fn powi(gamma: f64, n: usize) -> f64 {
    gamma.powf(n as f64)
}

/// OneCycleLR.get_lr (anneal_strategy="cos", three_phase=False), phase for phase:
/// phase 1 runs from step 0 to `end_up = float(pct_start × total) − 1`, annealing
/// `initial_lr = max_lr / 25` → `max_lr`; phase 2 from `end_up` to `end_down = total − 1`,
/// annealing `max_lr` → `min_lr = initial_lr / 1e4`. Within a phase,
/// `pct = (t − phase start) / (phase end − phase start)` and
/// `lr = end + (start − end) / 2 × (cos(π × pct) + 1)` (`_annealing_cos`). A step belongs to
/// phase 1 when `t ≤ end_up`, else to phase 2. PyTorch divides by zero for a phase of zero
/// length; we use its end value (`pct = 1`). Steps past `end_down` stay at `min_lr`.
fn one_cycle(t: usize, initial: f64, max: f64, min: f64, end_up: f64, end_down: f64) -> f64 {
    let t = t as f64;
    let (start_step, end_step, from, to) = if t <= end_up {
        (0.0, end_up, initial, max)
    } else {
        (end_up, end_down, max, min)
    };
    let span = end_step - start_step;
    let pct = if span > 0.0 {
        ((t - start_step) / span).min(1.0)
    } else {
        1.0
    };
    annealing_cos(from, to, pct)
}

/// `_annealing_cos(start, end, pct) = end + (start − end) / 2 × (cos(π × pct) + 1)`.
fn annealing_cos(start: f64, end: f64, pct: f64) -> f64 {
    end + (start - end) / 2.0 * ((std::f64::consts::PI * pct).cos() + 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::values::{Count, NonNegFloat, Positive, PositiveFloat};
    use std::f64::consts::PI;

    fn cfg(kind: ScheduleKind) -> Schedule {
        Schedule {
            kind,
            ..Schedule::default()
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * a.abs().max(b.abs()).max(1e-300)
    }

    #[track_caller]
    fn assert_close(a: f64, b: f64) {
        assert!(close(a, b), "{a} != {b}");
    }

    #[test]
    fn constant_is_base_everywhere() {
        let s = LrSchedule::new(&cfg(ScheduleKind::Constant), 0.1, 10, 100).unwrap();
        for step in [0, 1, 50, 99, 100, 1000] {
            assert_eq!(s.lr_at(step), 0.1);
        }
    }

    #[test]
    fn step_decays_at_epoch_boundaries() {
        let mut c = cfg(ScheduleKind::Step);
        c.step_size = Some(Positive(2));
        c.gamma = PositiveFloat(0.5);
        let s = LrSchedule::new(&c, 0.8, 10, 100).unwrap();
        // Epochs 0,1 → 0.8; 2,3 → 0.4; 4,5 → 0.2 (PyTorch StepLR stepped once per epoch).
        assert_eq!(s.lr_at(0), 0.8);
        assert_eq!(s.lr_at(19), 0.8);
        assert_eq!(s.lr_at(20), 0.4);
        assert_eq!(s.lr_at(39), 0.4);
        assert_eq!(s.lr_at(40), 0.2);
        for step in 0..100 {
            let epoch = step / 10;
            assert_close(s.lr_at(step), 0.8 * 0.5f64.powi((epoch / 2) as i32));
        }
    }

    #[test]
    fn multistep_counts_passed_milestones() {
        let mut c = cfg(ScheduleKind::Multistep);
        c.milestones = Some(vec![Positive(3), Positive(5)]);
        let s = LrSchedule::new(&c, 1.0, 4, 40).unwrap();
        for step in 0..40 {
            let epoch = step / 4;
            let n = [3, 5].iter().filter(|&&m| m <= epoch).count();
            assert_close(s.lr_at(step), 0.1f64.powi(n as i32));
        }
        assert_eq!(s.lr_at(11), 1.0); // epoch 2
        assert_close(s.lr_at(12), 0.1); // epoch 3
        assert_close(s.lr_at(20), 0.01); // epoch 5
    }

    #[test]
    fn cosine_closed_form() {
        let mut c = cfg(ScheduleKind::Cosine);
        c.min_lr = NonNegFloat(0.001);
        let s = LrSchedule::new(&c, 0.1, 10, 100).unwrap();
        assert_close(s.lr_at(0), 0.1);
        assert_close(s.lr_at(50), 0.001 + 0.099 / 2.0);
        assert_close(s.lr_at(100), 0.001);
        assert_close(s.lr_at(500), 0.001);
        for t in 0..=100 {
            let want = 0.001 + (0.1 - 0.001) * (1.0 + (PI * t as f64 / 100.0).cos()) / 2.0;
            assert_close(s.lr_at(t), want);
        }
    }

    /// OneCycleLR.get_lr transcribed from torch/optim/lr_scheduler.py (phase list, the loop
    /// over phases with `start_step` carried over), independently of `one_cycle`.
    fn torch_one_cycle(step: usize, max_lr: f64, pct_start: f64, total: usize) -> f64 {
        let initial = max_lr / 25.0;
        let min = initial / 1e4;
        let phases = [
            (pct_start * total as f64 - 1.0, initial, max_lr),
            (total as f64 - 1.0, max_lr, min),
        ];
        let mut start_step = 0.0;
        for (i, &(end_step, start_lr, end_lr)) in phases.iter().enumerate() {
            if step as f64 <= end_step || i == phases.len() - 1 {
                let pct = (step as f64 - start_step) / (end_step - start_step);
                return end_lr + (start_lr - end_lr) / 2.0 * ((PI * pct).cos() + 1.0);
            }
            start_step = end_step;
        }
        unreachable!()
    }

    #[test]
    fn onecycle_matches_pytorch() {
        for (total, pct, max) in [(100, 0.3, 0.1), (37, 0.25, 2.0), (1000, 0.45, 0.5)] {
            let mut c = cfg(ScheduleKind::Onecycle);
            c.pct_start = crate::config::values::Fraction(pct);
            c.max_lr = Some(PositiveFloat(max));
            let s = LrSchedule::new(&c, max / 2.0, 10, total).unwrap();
            for step in 0..total {
                assert_close(s.lr_at(step), torch_one_cycle(step, max, pct, total));
            }
        }
    }

    #[test]
    fn onecycle_hand_values() {
        let s = LrSchedule::new(&cfg(ScheduleKind::Onecycle), 0.1, 10, 100).unwrap();
        // max_lr defaults to the optimizer's LR; pct_start 0.3 → the peak is at step 29.
        assert_close(s.lr_at(0), 0.1 / 25.0);
        assert_close(s.lr_at(29), 0.1);
        assert!(s.lr_at(28) < 0.1 && s.lr_at(30) < 0.1);
        assert_close(s.lr_at(99), 0.1 / 25.0 / 1e4);
        assert_close(s.lr_at(150), 0.1 / 25.0 / 1e4);
    }

    #[test]
    fn warmup_then_shifted_main() {
        let mut c = cfg(ScheduleKind::Cosine);
        c.warmup_epochs = NonNegFloat(0.5); // 5 steps of 10 per epoch
        let s = LrSchedule::new(&c, 0.1, 10, 105).unwrap();
        assert_eq!(s.warmup_steps(), 5);
        for step in 0..5 {
            assert_close(s.lr_at(step), 0.1 * (step + 1) as f64 / 5.0);
        }
        // After warmup, cosine over T − W = 100 steps on t = step − 5.
        for step in 5..=105 {
            let t = (step - 5) as f64;
            assert_close(s.lr_at(step), 0.1 * (1.0 + (PI * t / 100.0).cos()) / 2.0);
        }
    }

    /// torch SequentialLR's LinearLR(start_factor=1/W, total_iters=W−1) closed form.
    #[test]
    fn warmup_is_torch_linear_lr() {
        let mut c = cfg(ScheduleKind::Constant);
        c.warmup_epochs = NonNegFloat(1.0);
        let w = 8;
        let s = LrSchedule::new(&c, 0.3, w, 100).unwrap();
        let start = 1.0 / w as f64;
        for i in 0..w {
            let factor = start + (1.0 - start) * i as f64 / (w - 1) as f64;
            assert_close(s.lr_at(i), 0.3 * factor);
        }
        assert_eq!(s.lr_at(w), 0.3);
    }

    #[test]
    fn warmup_shifts_epoch_based_kinds() {
        let mut c = cfg(ScheduleKind::Step);
        c.step_size = Some(Positive(1));
        c.warmup_epochs = NonNegFloat(1.0);
        let s = LrSchedule::new(&c, 1.0, 4, 40).unwrap();
        assert_eq!(s.lr_at(3), 1.0); // last warmup step
        assert_eq!(s.lr_at(4), 1.0); // main epoch 0
        assert_eq!(s.lr_at(7), 1.0);
        assert_close(s.lr_at(8), 0.1); // main epoch 1
    }

    #[test]
    fn fractional_warmup_rounds() {
        let mut c = cfg(ScheduleKind::Constant);
        c.warmup_epochs = NonNegFloat(0.25);
        assert_eq!(LrSchedule::new(&c, 0.1, 10, 50).unwrap().warmup_steps(), 3); // 2.5 → 3
        c.warmup_epochs = NonNegFloat(0.24);
        assert_eq!(LrSchedule::new(&c, 0.1, 10, 50).unwrap().warmup_steps(), 2);
    }

    /// The LR of every step under real PyTorch (2.11) schedulers, from tests/py/torch_lr.py
    /// (its output is tests/data/torch_lr.json; torch is not needed to run this test).
    #[test]
    fn matches_recorded_pytorch() {
        let json: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/data/torch_lr.json")).unwrap();
        let cases = json["cases"].as_object().unwrap();
        assert_eq!(cases.len(), 8);
        for (name, case) in cases {
            let num = |k: &str| case[k].as_f64().unwrap();
            let int = |k: &str| case[k].as_u64().unwrap() as usize;
            let mut c = match name.as_str() {
                "step" => {
                    let mut c = cfg(ScheduleKind::Step);
                    c.step_size = Some(Positive(2));
                    c.gamma = PositiveFloat(0.5);
                    c
                }
                "multistep" => {
                    let mut c = cfg(ScheduleKind::Multistep);
                    c.milestones = Some(vec![Positive(3), Positive(5)]);
                    c
                }
                "cosine" => {
                    let mut c = cfg(ScheduleKind::Cosine);
                    c.min_lr = NonNegFloat(0.001);
                    c
                }
                "warmup_cosine" => cfg(ScheduleKind::Cosine),
                "warmup_step" => {
                    let mut c = cfg(ScheduleKind::Step);
                    c.step_size = Some(Positive(1));
                    c
                }
                n if n.starts_with("onecycle") => {
                    let mut c = cfg(ScheduleKind::Onecycle);
                    c.max_lr = Some(PositiveFloat(num("max_lr")));
                    c.pct_start = crate::config::values::Fraction(num("pct_start"));
                    c
                }
                n => panic!("unknown case {n}"),
            };
            if let Some(w) = case.get("warmup_epochs") {
                c.warmup_epochs = NonNegFloat(w.as_f64().unwrap());
            }
            let s = LrSchedule::new(&c, num("lr"), int("spe"), int("total")).unwrap();
            let lrs = case["lrs"].as_array().unwrap();
            assert_eq!(lrs.len(), int("total"));
            for (step, want) in lrs.iter().enumerate() {
                let (got, want) = (s.lr_at(step), want.as_f64().unwrap());
                // PyTorch's chainable updates drift from the closed form by a few ulps.
                assert!(
                    (got - want).abs() <= 1e-9 * want.abs(),
                    "{name} step {step}: {got} vs torch {want}"
                );
            }
        }
    }

    #[test]
    fn errors() {
        assert!(LrSchedule::new(&cfg(ScheduleKind::Step), 0.1, 10, 100).is_err());
        assert!(LrSchedule::new(&cfg(ScheduleKind::Multistep), 0.1, 10, 100).is_err());
        let mut c = cfg(ScheduleKind::Multistep);
        c.milestones = Some(vec![]);
        assert!(LrSchedule::new(&c, 0.1, 10, 100).is_err());
        let mut c = cfg(ScheduleKind::Onecycle);
        c.max_lr = Some(PositiveFloat(0.05));
        let e = LrSchedule::new(&c, 0.1, 10, 100).unwrap_err();
        assert!(e.contains("max_lr"), "{e}");
        assert!(LrSchedule::new(&cfg(ScheduleKind::Constant), 0.1, 0, 100).is_err());
        assert!(LrSchedule::new(&cfg(ScheduleKind::Constant), 0.1, 10, 0).is_err());
    }

    /// nanoGPT's `get_lr(it)` (train.py), transcribed independently of `lr_at`.
    fn nanogpt_lr(it: usize, lr: f64, min_lr: f64, warmup_iters: usize, decay_iters: usize) -> f64 {
        let it = it as f64;
        let (warmup, decay) = (warmup_iters as f64, decay_iters as f64);
        if it < warmup {
            return lr * (it + 1.0) / (warmup + 1.0);
        }
        if it > decay {
            return min_lr;
        }
        let ratio = (it - warmup) / (decay - warmup);
        assert!((0.0..=1.0).contains(&ratio));
        let coeff = 0.5 * (1.0 + (PI * ratio).cos());
        min_lr + coeff * (lr - min_lr)
    }

    #[test]
    fn warmup_steps_then_cosine_is_nanogpt() {
        // nanoGPT's shakespeare-char numbers, scaled down: lr 1e-3, min_lr 1e-4, warmup 10,
        // lr_decay_iters = max_iters = 100 (our run's total steps). Steps per epoch do not
        // matter to a step-defined schedule: 7 and 1000 give the same LRs.
        for spe in [7, 1000] {
            let mut c = cfg(ScheduleKind::Cosine);
            c.min_lr = NonNegFloat(1e-4);
            c.warmup_steps = Some(Count(10));
            let s = LrSchedule::new(&c, 1e-3, spe, 100).unwrap();
            assert_eq!(s.warmup_steps(), 10);
            for step in 0..=130 {
                assert_close(s.lr_at(step), nanogpt_lr(step, 1e-3, 1e-4, 10, 100));
            }
            // The boundaries by hand: 1/11 of lr at step 0, 10/11 at step 9, lr at step 10,
            // the midpoint of the cosine at step 55, min_lr from step 100 on.
            assert_close(s.lr_at(0), 1e-3 / 11.0);
            assert_close(s.lr_at(9), 1e-3 * 10.0 / 11.0);
            assert_close(s.lr_at(10), 1e-3);
            assert_close(s.lr_at(55), 1e-4 + 0.9e-3 / 2.0);
            assert_close(s.lr_at(100), 1e-4);
            assert_close(s.lr_at(101), 1e-4);
            assert!(s.lr_at(99) > 1e-4);
        }
        // Other lengths, including a warmup of 1 and a run one step longer than its warmup.
        for (warmup, total) in [(1, 50), (0, 20), (99, 100), (100, 5000)] {
            let mut c = cfg(ScheduleKind::Cosine);
            c.min_lr = NonNegFloat(6e-5);
            c.warmup_steps = Some(Count(warmup));
            let s = LrSchedule::new(&c, 6e-4, 13, total).unwrap();
            for step in (0..total + 3).filter(|i| *i < 400 || i % 97 == 0) {
                assert_close(s.lr_at(step), nanogpt_lr(step, 6e-4, 6e-5, warmup, total));
            }
        }
    }

    #[test]
    fn warmup_steps_with_other_kinds() {
        let mut c = cfg(ScheduleKind::Constant);
        c.warmup_steps = Some(Count(4));
        let s = LrSchedule::new(&c, 0.5, 3, 20).unwrap();
        for step in 0..4 {
            assert_close(s.lr_at(step), 0.5 * (step + 1) as f64 / 5.0);
        }
        assert_eq!(s.lr_at(4), 0.5);
        // Epoch-based kinds count epochs of the main schedule from the end of the warmup.
        let mut c = cfg(ScheduleKind::Step);
        c.step_size = Some(Positive(1));
        c.warmup_steps = Some(Count(2));
        let s = LrSchedule::new(&c, 1.0, 3, 20).unwrap();
        assert_close(s.lr_at(1), 2.0 / 3.0);
        assert_eq!(s.lr_at(2), 1.0);
        assert_eq!(s.lr_at(4), 1.0);
        assert_close(s.lr_at(5), 0.1);
        // Zero warmup steps is no warmup.
        let mut c = cfg(ScheduleKind::Cosine);
        c.warmup_steps = Some(Count(0));
        let with = LrSchedule::new(&c, 0.1, 10, 100).unwrap();
        let without = LrSchedule::new(&cfg(ScheduleKind::Cosine), 0.1, 10, 100).unwrap();
        for step in 0..=100 {
            assert_eq!(with.lr_at(step), without.lr_at(step));
        }
        // Both warmups at once is refused (the config check says where).
        c.warmup_steps = Some(Count(3));
        c.warmup_epochs = NonNegFloat(1.0);
        assert!(LrSchedule::new(&c, 0.1, 10, 100).is_err());
    }

    #[test]
    fn warmup_longer_than_run_is_all_warmup() {
        let mut c = cfg(ScheduleKind::Cosine);
        c.warmup_epochs = NonNegFloat(2.0);
        let s = LrSchedule::new(&c, 0.1, 10, 15).unwrap();
        assert_close(s.lr_at(14), 0.1 * 15.0 / 20.0);
        assert!(s.lr_at(20).is_finite());
    }
}
