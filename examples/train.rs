//! Train from a program instead of the command line: load a config through the library, change
//! it in code, train a few steps on the CPU and read the metrics back.
//! `cargo run --release --example train -- configs/lenet.toml /tmp/lenet-run`

use std::path::PathBuf;
use std::process::ExitCode;

use trainer::config::values::Positive;
use trainer::train::fit::{FitOptions, fit};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let path = PathBuf::from(args.next().unwrap_or_else(|| "configs/lenet.toml".into()));
    let run_dir = args.next().map(PathBuf::from);

    let loaded = trainer::config::load(&path, &[]);
    let mut config = match loaded.result {
        Ok(c) => c,
        Err(e) => {
            eprint!("{}", e.render(&loaded.sources));
            return ExitCode::from(2);
        }
    };
    // A short run on a slice of the data: typed fields, changed in code.
    config.data.batch_size = Positive(32);
    config.data.train_limit = Some(Positive(1024));
    config.data.val_limit = Some(Positive(256));
    config.train.epochs = Positive(2);
    config.train.max_steps = Some(Positive(40));
    config.log.progress = trainer::config::Progress::Off;

    let options = FitOptions {
        config_path: path,
        run_dir,
        ..FitOptions::default()
    };
    let report = match fit(&config, None, &options) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    // lenet.toml is a classifier (cross-entropy), so validation figures are there.
    for r in &report.history {
        println!(
            "epoch {} (step {}): train loss {:.4}, val loss {:.4}, val accuracy {:.2}%",
            r.epoch,
            r.step,
            r.train_loss,
            r.val_loss.unwrap_or(f64::NAN),
            100.0 * r.val_accuracy.unwrap_or(f64::NAN)
        );
    }
    println!("run directory: {}", report.run_dir.display());
    ExitCode::SUCCESS
}
