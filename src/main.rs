use std::process::ExitCode;

fn main() -> ExitCode {
    // Headless Mesa complains on every adapter probe when XDG_RUNTIME_DIR is unset or invalid.
    if let Some(dir) = trainer::backend::gpu::private_runtime_dir() {
        // SAFETY: no other thread exists yet that could read the environment meanwhile.
        unsafe { std::env::set_var("XDG_RUNTIME_DIR", dir) };
    }
    // A panic is our bug, never the user's: report it as an internal error (exit 1). The
    // report must not panic itself when stderr is gone (that would abort, exit 134).
    std::panic::set_hook(Box::new(|info| {
        trainer::errln!("internal error (a bug in trainer, please report it): {info}");
    }));
    match std::panic::catch_unwind(trainer::cli::main) {
        Ok(code) => code,
        Err(_) => ExitCode::from(1),
    }
}
