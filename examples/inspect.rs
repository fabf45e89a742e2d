//! Load a config through the library, override a value in code, build the graph and list its
//! parameters: `cargo run --example inspect -- configs/resnet.toml`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "configs/resnet.toml".into());
    // Overrides use the same syntax as `--set` on the command line.
    let loaded = trainer::config::load(path.as_ref(), &["run.seed=7".to_string()]);
    let config = match loaded.result {
        Ok(c) => c,
        Err(e) => {
            eprint!("{}", e.render(&loaded.sources));
            return ExitCode::from(2);
        }
    };
    let graph = match trainer::nn::build(&config) {
        Ok(g) => g,
        Err(d) => {
            eprint!("{}", d.render(&loaded.sources));
            return ExitCode::from(2);
        }
    };
    for p in &graph.params {
        let first = p.init.values(config.run.seed, &p.name, p.ty.numel().min(3));
        println!("{:40} {:?} starts {:?}", p.name, p.ty.shape, first);
    }
    println!("{} trainable parameters", graph.param_count());
    ExitCode::SUCCESS
}
