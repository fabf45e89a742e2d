//! Whether the device still works, and the blocking wait that says so instead of hanging.
//!
//! wgpu reports failures in three ways: an error scope (plan-time work, `Gpu::scoped`), the
//! uncaptured-error handler (anything else: an out-of-memory error mid-step arrives here) and
//! the device-lost callback. `Health` keeps the first uncaptured error until the next `check`
//! and the loss for good (every later call fails too), each with the step that was in flight
//! when it was noticed. Errors around a loss (a buffer it invalidated) are reported as the
//! loss. The handlers replace wgpu's defaults, which panic.
//!
//! `Gpu::wait` is the only blocking wait (readbacks go through it). Each submit `step` makes
//! gets `TRAINER_GPU_TIMEOUT_SECS` (default 60 s) of its own, so a long queue of steps is not a
//! hang but one stuck submit is; a timeout is an error, and the `Gpu` then leaks its queue
//! instead of dropping it (wgpu-core's `Queue::drop` waits for the device to drain). wgpu
//! panics when a Vulkan driver fails a wait (`Device::poll` → `handle_error_fatal`); that panic
//! is caught and reported as the lost device it is, without the "internal error" text of the
//! process panic hook (`quiet_panics`).

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, Once};
use std::time::Duration;

use super::GpuError;

/// How long one submit may take before the device counts as hung: generous, since a submit is
/// planned to take well under a second (`submit.rs`), and a false alarm stops a run.
pub const DEFAULT_TIMEOUT_SECS: f64 = 60.0;

/// Submissions remembered for `wait`; older ones are waited for as a group.
const MAX_IN_FLIGHT: usize = 4096;

#[derive(Default)]
pub(super) struct Health {
    first: Mutex<Option<GpuError>>,
    lost: Mutex<Option<String>>,
    /// The last training step submitted (0: none yet), to say when a failure was noticed.
    step: AtomicU64,
    /// A wait timed out: the queue may never drain, and dropping it waits for that.
    hung: AtomicBool,
    /// Step submissions, oldest first: `wait` gives each its own deadline, so a long queue of
    /// steps (bench queues them back to back) is not mistaken for a hang.
    in_flight: Mutex<VecDeque<wgpu::SubmissionIndex>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Health {
    /// " after step N was submitted", or "" before the first step.
    pub fn when(&self) -> String {
        match self.step.load(Ordering::Relaxed) {
            0 => String::new(),
            n => format!(" after step {n} was submitted"),
        }
    }

    pub fn set_step(&self, step: u64) {
        self.step.store(step, Ordering::Relaxed);
    }

    /// The uncaptured-error handler: keeps the first error for the next `check`.
    pub fn error(&self, e: &wgpu::Error) {
        let mut first = lock(&self.first);
        if first.is_none() {
            *first = Some(super::error::classify(e, &self.when()));
        }
    }

    /// The device-lost callback. `fault` names the test hook when it destroyed the device.
    pub fn lost(&self, reason: wgpu::DeviceLostReason, message: &str, fault: Option<&str>) {
        let why = match (reason, fault) {
            (wgpu::DeviceLostReason::Destroyed, Some(f)) => {
                format!("destroyed by the test hook {f}")
            }
            (wgpu::DeviceLostReason::Destroyed, None) => "destroyed".to_string(),
            (_, _) => format!(
                "{}: the driver reset it, it was removed, or it ran out of memory",
                match message {
                    "" => "no reason given",
                    m => m,
                }
            ),
        };
        let mut lost = lock(&self.lost);
        if lost.is_none() {
            *lost = Some(format!(
                "the GPU device was lost{} ({why}). A `trainer fit` run continues from its last checkpoint with `trainer resume`",
                self.when()
            ));
        }
    }

    /// The first error since the last call; once the device is lost, that, every time (the
    /// errors around a loss, such as using a buffer it invalidated, are its consequences).
    pub fn check(&self) -> Result<(), GpuError> {
        let first = lock(&self.first).take();
        if let Some(why) = &*lock(&self.lost) {
            return Err(GpuError::Lost(why.clone()));
        }
        match first {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    pub fn submitted(&self, index: wgpu::SubmissionIndex) {
        let mut q = lock(&self.in_flight);
        if q.len() == MAX_IN_FLIGHT {
            q.pop_front();
        }
        q.push_back(index);
    }

    pub fn next_in_flight(&self) -> Option<wgpu::SubmissionIndex> {
        lock(&self.in_flight).pop_front()
    }

    pub fn forget_in_flight(&self) {
        lock(&self.in_flight).clear();
    }

    pub fn set_hung(&self) {
        self.hung.store(true, Ordering::Relaxed);
        A_DEVICE_HUNG.store(true, Ordering::Relaxed);
    }

    pub fn hung(&self) -> bool {
        self.hung.load(Ordering::Relaxed)
    }
}

/// Whether any device of this process hung (a wait timed out).
static A_DEVICE_HUNG: AtomicBool = AtomicBool::new(false);

/// Whether a device of this process hung: its driver may still be running the work, so the
/// process must leave without tearing down the driver's libraries under it (`main`).
pub fn a_device_hung() -> bool {
    A_DEVICE_HUNG.load(Ordering::Relaxed)
}

/// `TRAINER_GPU_TIMEOUT_SECS`: seconds one submit may take (default 60).
pub fn timeout_from_env() -> Result<Duration, GpuError> {
    parse_timeout(std::env::var("TRAINER_GPU_TIMEOUT_SECS").ok().as_deref())
}

fn parse_timeout(value: Option<&str>) -> Result<Duration, GpuError> {
    let Some(v) = value else {
        return Ok(Duration::from_secs_f64(DEFAULT_TIMEOUT_SECS));
    };
    match v.trim().parse::<f64>() {
        Ok(s) if s > 0.0 && s.is_finite() && s < 1e9 => Ok(Duration::from_secs_f64(s)),
        _ => Err(GpuError::Plan(format!(
            "TRAINER_GPU_TIMEOUT_SECS={v}: expected a positive number of seconds"
        ))),
    }
}

thread_local! {
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, turning a panic into `Err(its message)` without printing it. wgpu panics when the
/// driver fails a wait (`Device::poll` on a lost Vulkan device: `handle_error_fatal`), after
/// the device-lost callback has already said why; that is a device error, not our bug, so
/// the process panic hook (an "internal error" report) must stay quiet for it.
pub fn quiet_panics<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                previous(info);
            }
        }));
    });
    let was = QUIET.with(|q| q.replace(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET.with(|q| q.set(was));
    r.map_err(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "wgpu panicked".into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oom() -> wgpu::Error {
        wgpu::Error::OutOfMemory {
            source: "Not enough memory left".into(),
        }
    }

    #[test]
    fn an_uncaptured_error_mid_step_surfaces_once_with_its_step() {
        let h = Health::default();
        h.set_step(7);
        h.error(&oom());
        h.error(&oom()); // only the first is kept
        let e = h.check().expect_err("reported").to_string();
        assert!(e.contains("out of GPU memory"), "{e}");
        assert!(e.contains("after step 7 was submitted"), "{e}");
        assert!(e.contains("data.batch_size"), "{e}");
        assert!(h.check().is_ok(), "an error is reported once");
    }

    #[test]
    fn a_lost_device_fails_every_later_check() {
        let h = Health::default();
        h.set_step(3);
        h.error(&oom()); // a consequence of the loss, reported before it
        h.lost(
            wgpu::DeviceLostReason::Destroyed,
            "",
            Some("TRAINER_GPU_FAULT=lost@3"),
        );
        h.lost(wgpu::DeviceLostReason::Unknown, "later", None);
        for _ in 0..2 {
            let e = h.check().expect_err("lost").to_string();
            assert!(e.starts_with("the GPU device was lost after step 3"), "{e}");
            assert!(e.contains("TRAINER_GPU_FAULT=lost@3"), "{e}");
        }
    }

    #[test]
    fn a_panic_inside_becomes_an_error_without_a_report() {
        let r: Result<(), String> =
            quiet_panics(|| panic!("Error in Device::poll: Parent device is lost"));
        assert_eq!(
            r.unwrap_err(),
            "Error in Device::poll: Parent device is lost"
        );
        assert_eq!(quiet_panics(|| 5), Ok(5));
        assert!(!QUIET.with(Cell::get), "the hook is loud again afterwards");
    }

    #[test]
    fn the_timeout_setting_is_checked() {
        assert_eq!(parse_timeout(None).unwrap(), Duration::from_secs(60));
        assert_eq!(
            parse_timeout(Some("0.5")).unwrap(),
            Duration::from_millis(500)
        );
        for bad in ["0", "-1", "inf", "NaN", "soon"] {
            let e = parse_timeout(Some(bad)).expect_err(bad).to_string();
            assert!(e.contains("TRAINER_GPU_TIMEOUT_SECS"), "{e}");
        }
    }
}
