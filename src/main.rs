use std::process::ExitCode;

fn main() -> ExitCode {
    // A panic is our bug, never the user's: report it as an internal error (exit 1).
    std::panic::set_hook(Box::new(|info| {
        eprintln!("internal error (a bug in trainer, please report it): {info}");
    }));
    match std::panic::catch_unwind(trainer::cli::main) {
        Ok(code) => code,
        Err(_) => ExitCode::from(1),
    }
}
