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
    let code = match std::panic::catch_unwind(trainer::cli::main) {
        Ok(code) => code,
        Err(_) => ExitCode::from(1),
    };
    if trainer::backend::gpu::a_device_hung() {
        // The driver's threads may still run the hung work: a normal exit would unload its
        // libraries under them (lavapipe then crashes: exit 139, not the error's 1). The
        // error is printed; leave now.
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        let status = if code == ExitCode::SUCCESS { 0 } else { 1 };
        // SAFETY: `_exit` ends the process at once; nothing runs after it.
        #[allow(unsafe_code)]
        unsafe {
            libc::_exit(status)
        }
    }
    code
}
