//! SIGINT and SIGTERM: the first asks the run to stop after the current step (it then saves a
//! checkpoint and exits 130); a second SIGINT exits at once, as a user pressing Ctrl-C twice
//! expects.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);
static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();

/// The exit code of a run stopped by a signal (128 + SIGINT, as shells report it).
pub const EXIT_INTERRUPTED: u8 = 130;

/// Installs the handler once per process (the library may run several fits).
pub fn install() -> Result<(), String> {
    INSTALLED
        .get_or_init(|| {
            ctrlc::set_handler(|| {
                if STOP.swap(true, Ordering::SeqCst) {
                    eprintln!("\nsecond interrupt: exiting now without a checkpoint");
                    std::process::exit(EXIT_INTERRUPTED as i32);
                }
                eprintln!("\ninterrupted: finishing this step, then saving a checkpoint (interrupt again to exit now)");
            })
            .map_err(|e| format!("cannot install the signal handler: {e}"))
        })
        .clone()
}

/// Has a stop been asked for?
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Forgets a handled stop, so that a later fit in the same process runs.
pub fn clear() {
    STOP.store(false, Ordering::SeqCst);
}
