//! Splitting a step into submits short enough for a GPU watchdog. macOS stops a command buffer
//! that runs for more than a few seconds on a GPU that drives a display (Windows resets the
//! driver after 2 s), and one training step of a large model at a large batch can take longer.
//! `GpuExec::new` estimates each dispatch's time from the plan (its FLOPs and the bytes it
//! binds, at a deliberately low throughput) and cuts the step's dispatches, in order, into runs
//! whose estimate stays under a budget, one command buffer and submit each. A cut only ends a
//! command buffer: the same dispatches run in the same order on the same memory, so results are
//! bit-identical to one submit.
//!
//! The budget is `TRAINER_GPU_SUBMIT_MS` (default 1000 ms; `inf`: one submit per step). The
//! estimate's rates ([`Rate`]: 25 GFLOP/s and 10 GB/s, 0.5 GFLOP/s on a software adapter) are
//! pessimistic on purpose, since nothing is measured before the first step. So the first step
//! that is cut in several is timed with one wait, every estimate is scaled by measured /
//! estimated with a margin of 2, and the step is cut anew (`GpuExec::calibrate`): a ResNet-18
//! step on an H100 goes back to about one submit, a slow GPU keeps its cuts. A single dispatch
//! above the budget cannot be cut without changing its kernel: after the timed step one warning
//! names its layers ([`warn_long`]). `trainer bench --json` reports `submits_per_step`.

use std::collections::BTreeSet;
use std::ops::Range;
use std::sync::Mutex;

use super::GpuError;

/// The estimated time one submit may take, in milliseconds (`TRAINER_GPU_SUBMIT_MS`).
pub const DEFAULT_BUDGET_MS: f64 = 1000.0;

/// The throughput the estimate assumes: far below what our kernels reach on any GPU with a
/// watchdog (an integrated GPU at a fraction of its peak), so a real submit takes a fraction
/// of its estimate.
#[derive(Clone, Copy, Debug)]
pub struct Rate {
    pub flops_per_s: f64,
    pub bytes_per_s: f64,
    /// Fixed cost of one dispatch.
    pub launch_s: f64,
}

impl Rate {
    pub fn for_adapter(device_type: &str) -> Rate {
        match device_type {
            // A software adapter (lavapipe): measured 0.5-0.8 GFLOP/s on 2 cores, ~28 µs a
            // dispatch. It has no watchdog, but the same estimate bounds its waits.
            "Cpu" => Rate {
                flops_per_s: 0.5e9,
                bytes_per_s: 2e9,
                launch_s: 30e-6,
            },
            _ => Rate {
                flops_per_s: 25e9,
                bytes_per_s: 10e9,
                launch_s: 10e-6,
            },
        }
    }

    /// Estimated seconds of one dispatch: compute or memory bound, whichever is slower.
    pub fn seconds(&self, flops: u64, bytes: u64) -> f64 {
        self.launch_s + (flops as f64 / self.flops_per_s).max(bytes as f64 / self.bytes_per_s)
    }
}

/// Cuts dispatches with estimated `costs` (seconds, in launch order) into consecutive runs
/// whose sum stays within `budget`, greedily; a dispatch above the budget runs alone.
pub fn split(costs: &[f64], budget: f64) -> Vec<Range<usize>> {
    let mut runs = Vec::new();
    let (mut start, mut sum) = (0, 0.0);
    for (i, &c) in costs.iter().enumerate() {
        if i > start && sum + c > budget {
            runs.push(start..i);
            (start, sum) = (i, 0.0);
        }
        sum += c;
    }
    if start < costs.len() {
        runs.push(start..costs.len());
    }
    runs
}

/// `TRAINER_GPU_SUBMIT_MS`, in seconds: the estimated time one submit may take; `inf` keeps
/// a whole step in one submit.
pub fn budget_from_env() -> Result<f64, GpuError> {
    parse_budget(std::env::var("TRAINER_GPU_SUBMIT_MS").ok().as_deref())
}

fn parse_budget(value: Option<&str>) -> Result<f64, GpuError> {
    let Some(v) = value else {
        return Ok(DEFAULT_BUDGET_MS / 1e3);
    };
    match v.trim().parse::<f64>() {
        Ok(ms) if ms > 0.0 => Ok(ms / 1e3),
        _ => Err(GpuError::Plan(format!(
            "TRAINER_GPU_SUBMIT_MS={v}: expected a positive number of milliseconds (or inf)"
        ))),
    }
}

/// Warns about dispatches estimated above the budget, once per layer per process (the
/// training plan and the evaluation model share layers): a single dispatch cannot be split
/// without changing its kernel.
pub fn warn_long(long: &[(String, f64)], budget: f64) {
    static WARNED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    let mut warned = WARNED.lock().unwrap_or_else(|p| p.into_inner());
    let mut new: Vec<&(String, f64)> = Vec::new();
    for l in long {
        if warned.insert(l.0.clone()) {
            new.push(l);
        }
    }
    if new.is_empty() {
        return;
    }
    const SHOWN: usize = 5;
    let mut names: Vec<String> = new
        .iter()
        .take(SHOWN)
        .map(|(layer, s)| format!("layer `{layer}` (about {} ms)", ms(*s)))
        .collect();
    if new.len() > SHOWN {
        names.push(format!("{} more layers", new.len() - SHOWN));
    }
    crate::errln!(
        "warning: {}: a kernel estimated from the timed first step above the {} ms a submit may take (TRAINER_GPU_SUBMIT_MS) cannot be split, and a GPU watchdog (macOS, Windows) may stop it; lower data.batch_size if it does",
        names.join(", "),
        ms(budget)
    );
}

/// Seconds as milliseconds, without trailing zeros ("1000", "0.25").
fn ms(seconds: f64) -> String {
    let t = format!("{:.3}", seconds * 1e3);
    t.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_consecutive_in_order_and_within_the_budget() {
        let costs = [0.3, 0.3, 0.3, 0.5, 2.0, 0.1, 0.9, 0.05];
        let runs = split(&costs, 1.0);
        assert_eq!(runs, vec![0..3, 3..4, 4..5, 5..7, 7..8]);
        for r in &runs {
            let sum: f64 = costs[r.clone()].iter().sum();
            assert!(sum <= 1.0 || r.len() == 1, "{r:?}: {sum}");
        }
        assert_eq!(split(&costs, f64::INFINITY), vec![0..8]);
        assert_eq!(split(&costs, 1e-9).len(), costs.len());
        assert!(split(&[], 1.0).is_empty());
    }

    #[test]
    fn the_estimate_is_the_slower_of_compute_and_memory() {
        let r = Rate::for_adapter("DiscreteGpu");
        let compute = r.seconds(25_000_000_000, 0);
        assert!((compute - 1.0 - r.launch_s).abs() < 1e-9, "{compute}");
        assert!(r.seconds(0, 10_000_000_000) > r.seconds(1_000, 1_000));
        assert!(Rate::for_adapter("Cpu").seconds(1 << 30, 0) > compute);
    }

    #[test]
    fn the_budget_setting_is_checked() {
        assert_eq!(parse_budget(None).unwrap(), 1.0);
        assert_eq!(parse_budget(Some("250")).unwrap(), 0.25);
        assert_eq!(parse_budget(Some("inf")).unwrap(), f64::INFINITY);
        for bad in ["0", "-5", "NaN", "fast"] {
            let e = parse_budget(Some(bad)).expect_err(bad).to_string();
            assert!(e.contains("TRAINER_GPU_SUBMIT_MS"), "{e}");
        }
    }
}
