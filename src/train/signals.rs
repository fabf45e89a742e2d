//! SIGINT, SIGTERM and SIGHUP during a fit. The first asks the run to stop after the current
//! step, save a checkpoint and exit 130. Signals that arrive within [`TOGETHER`] of the first
//! are that same request: GNU `timeout`, a terminal's Ctrl-C and `kill -- -PGID` signal both
//! the process and its group, so one stop often arrives twice, in any mix of INT and TERM.
//! A signal after that window is a deliberate second interrupt: the process exits at once,
//! without a checkpoint, with [`EXIT_ABORTED`] (the run keeps the checkpoints it saved
//! before). Between fits (the library may run several) a signal exits at once with 130, as it
//! would with no handler: there is nothing to save.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError, mpsc};
use std::time::{Duration, Instant};

use crate::checkpoint::Store;
use crate::errln;

/// The exit code of a run stopped by a signal after saving a checkpoint (128 + SIGINT, as
/// shells report an interrupted program).
pub const EXIT_INTERRUPTED: u8 = 130;

/// The exit code of a run stopped at once by a second interrupt, without saving a checkpoint.
pub const EXIT_ABORTED: u8 = 131;

/// Signals this close to the first one are the same request to stop.
pub const TOGETHER: Duration = Duration::from_secs(1);

static STOP: AtomicBool = AtomicBool::new(false);
static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
static WATCHED: Mutex<Option<Watched>> = Mutex::new(None);

/// The fit in progress, for the messages, and when its stop was asked for.
struct Watched {
    run_dir: PathBuf,
    checkpoints: PathBuf,
    first: Option<Instant>,
}

/// Installs the handler once per process (the library may run several fits).
pub fn install() -> Result<(), String> {
    INSTALLED
        .get_or_init(|| {
            ctrlc::set_handler(on_signal)
                .map_err(|e| format!("cannot install the signal handler: {e}"))
        })
        .clone()
}

/// Routes signals to the fit writing `run_dir` (checkpoints in `checkpoints`) until the guard
/// drops; a stop asked for before is forgotten.
pub fn watch(run_dir: &Path, checkpoints: &Path) -> Watching {
    STOP.store(false, Ordering::SeqCst);
    *watched() = Some(Watched {
        run_dir: run_dir.to_path_buf(),
        checkpoints: checkpoints.to_path_buf(),
        first: None,
    });
    Watching(())
}

/// While it lives, signals stop the watched fit; see [`watch`].
pub struct Watching(());

impl Drop for Watching {
    fn drop(&mut self) {
        *watched() = None;
        STOP.store(false, Ordering::SeqCst);
    }
}

/// Has a stop been asked for?
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

fn watched() -> MutexGuard<'static, Option<Watched>> {
    // The data stays consistent even if a holder panicked: every write is one assignment.
    WATCHED.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a signal does, given when the first one of this fit arrived.
#[derive(Debug, PartialEq)]
enum Reaction {
    /// The first: stop after this step with a checkpoint.
    Stop,
    /// Part of the first (see [`TOGETHER`]): nothing more to do.
    Same,
    /// A deliberate second interrupt: exit now.
    ExitNow,
}

fn react(first: Option<Instant>, now: Instant) -> Reaction {
    match first {
        None => Reaction::Stop,
        Some(t) if now.saturating_duration_since(t) < TOGETHER => Reaction::Same,
        Some(_) => Reaction::ExitNow,
    }
}

/// Runs on ctrlc's own thread (not in the signal handler), so it may lock and print.
fn on_signal() {
    let now = Instant::now();
    let mut watched = watched();
    let Some(w) = watched.as_mut() else {
        std::process::exit(EXIT_INTERRUPTED as i32);
    };
    match react(w.first, now) {
        Reaction::Stop => {
            w.first = Some(now);
            STOP.store(true, Ordering::SeqCst);
            say(format!(
                "\ninterrupted: finishing this step, then saving a checkpoint in {} (interrupt again after a second to exit at once without one)",
                w.run_dir.display()
            ));
        }
        Reaction::Same => {}
        Reaction::ExitNow => {
            let last = match Store::new(&w.checkpoints, 1).latest_dir() {
                Some(d) => format!(
                    "its last checkpoint is {}: continue with `trainer resume {}`",
                    d.file_name().unwrap_or_default().to_string_lossy(),
                    w.run_dir.display()
                ),
                None => format!("{} has no checkpoint to resume from", w.run_dir.display()),
            };
            let said = say(format!(
                "\ninterrupted again: exiting now without saving a checkpoint; {last}"
            ));
            let _ = said.recv_timeout(Duration::from_millis(500));
            std::process::exit(EXIT_ABORTED as i32);
        }
    }
}

/// Prints `text` on a thread of its own and answers on the channel once it is written. The
/// handler must not wait on a stderr that blocks (a full pipe nobody reads, a stalled
/// terminal): ctrlc runs one handler at a time, so no later signal could be handled.
fn say(text: String) -> mpsc::Receiver<()> {
    let (done, said) = mpsc::channel();
    let _ = std::thread::Builder::new()
        .name("trainer-signal-message".into())
        .spawn(move || {
            errln!("{text}");
            let _ = done.send(());
        });
    said
}

/// `TRAINER_TEST_SLOW_STEP_MS`, a testing hook: every step takes at least this long, as a big
/// model's would, so that tests/signals.rs can interrupt a run in the middle of a step.
pub fn test_slow_step() -> Result<Option<Duration>, String> {
    let Ok(v) = std::env::var("TRAINER_TEST_SLOW_STEP_MS") else {
        return Ok(None);
    };
    match v.trim().parse::<u64>() {
        Ok(ms) => Ok(Some(Duration::from_millis(ms))),
        Err(_) => Err(format!(
            "TRAINER_TEST_SLOW_STEP_MS={v}: expected whole milliseconds; it is a testing hook"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_together_are_one_stop_a_later_one_exits() {
        let t0 = Instant::now();
        assert_eq!(react(None, t0), Reaction::Stop);
        for ms in [0, 1, 10, 999] {
            let now = t0 + Duration::from_millis(ms);
            assert_eq!(react(Some(t0), now), Reaction::Same, "{ms} ms");
        }
        for ms in [1000, 2000, 60_000] {
            let now = t0 + Duration::from_millis(ms);
            assert_eq!(react(Some(t0), now), Reaction::ExitNow, "{ms} ms");
        }
        // A clock read before the first signal's (threads race) is still "together".
        assert_eq!(
            react(Some(t0 + Duration::from_millis(5)), t0),
            Reaction::Same
        );
    }
}
