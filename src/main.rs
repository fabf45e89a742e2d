use std::process::ExitCode;

fn main() -> ExitCode {
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
