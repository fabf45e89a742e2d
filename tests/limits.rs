//! Inputs without a natural bound, driven through the CLI as a user (or a script gone wrong)
//! would: plans larger than the host's memory, configs of megabytes of garbage, blocks and
//! `extends` chains nested thousands deep, dotted keys of hundreds of parts, numbers at the
//! edge of every range. Each must end in one screen of error that says where and what to
//! change, exit 2, never an abort (134), a stack overflow, a hang or a flood of output.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// More lines than this is more than a screenful.
const SCREEN: usize = 60;

fn trainer(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_trainer"));
    c.args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("TRAINER_HOST_MEMORY");
    c
}

fn run(args: &[&str]) -> Output {
    trainer(args).output().expect("run trainer")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Exit 2, nothing on stdout, one screen of stderr that contains every `expect`.
fn refused(out: &Output, expect: &[&str]) -> String {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "exit code; stderr:\n{err}");
    assert!(out.stdout.is_empty(), "stdout: {}", text(&out.stdout));
    let lines = err.lines().count();
    assert!(lines <= SCREEN, "{lines} lines of stderr:\n{err}");
    for bad in [
        "memory allocation of",
        "panicked",
        "internal error",
        "overflow",
    ] {
        assert!(!err.contains(bad), "stderr says {bad:?}:\n{err}");
    }
    for e in expect {
        assert!(err.contains(e), "stderr lacks {e:?}:\n{err}");
    }
    err
}

/// The mlp config with `[model]` layers widened until one step needs hundreds of GiB: more
/// than any machine these tests run on has, yet `check` and `plan` accept it.
const HUGE: [&str; 4] = [
    "--set",
    "data.batch_size=60000",
    "--set",
    "model.layers.1.out=1000000",
];

#[test]
fn a_plan_larger_than_host_memory_is_refused_with_the_numbers_in_every_command() {
    let plan = run(&[&["plan", "configs/mlp.toml"][..], &HUGE].concat());
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan.stderr));
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let fit = run(&[
        &["fit", "configs/mlp.toml", "--device", "cpu", "--run-dir"][..],
        &[run_dir.to_str().unwrap()],
        &HUGE,
    ]
    .concat());
    let numbers = [
        "not enough host memory for the training step at batch 60000",
        "GiB of host memory",
        "is available (",
        "Arena",
        "to fit: lower data.batch_size (now 60000)",
        "train.checkpointing",
    ];
    refused(&fit, &numbers);
    assert!(
        !run_dir.exists(),
        "a refused fit left {}",
        run_dir.display()
    );
    // bench fills its own synthetic batch: a huge batch of the shipped model.
    let bench = run(&[
        "bench",
        "configs/mlp.toml",
        "--device",
        "cpu",
        "--set",
        "data.batch_size=50000000",
    ]);
    refused(
        &bench,
        &[
            "at batch 50000000",
            "GiB of host memory",
            "lower data.batch_size",
        ],
    );
    // eval prepares the evaluation model at the evaluation batch size before anything else.
    let eval = run(&[
        "eval",
        "configs/mlp.toml",
        "--device",
        "cpu",
        "--checkpoint",
        run_dir.to_str().unwrap(),
        "--set",
        "data.batch_size=50000000",
    ]);
    refused(
        &eval,
        &[
            "not enough host memory for the evaluation model at batch 50000000",
            "lower data.eval_batch_size",
        ],
    );
}

#[test]
fn what_the_host_has_decides_and_an_override_is_checked() {
    // The same small run under a stated 1 MiB: refused before the run directory is made.
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let args = [
        "fit",
        "configs/mlp.toml",
        "--device",
        "cpu",
        "--run-dir",
        run_dir.to_str().unwrap(),
        "--set",
        "data.train_limit=64",
        "--set",
        "data.batch_size=32",
    ];
    let out = trainer(&args)
        .env("TRAINER_HOST_MEMORY", "1MiB")
        .output()
        .unwrap();
    refused(
        &out,
        &["1.0 MiB is available (TRAINER_HOST_MEMORY=1MiB)", "State"],
    );
    assert!(!run_dir.exists());
    let out = trainer(&args)
        .env("TRAINER_HOST_MEMORY", "plenty")
        .output()
        .unwrap();
    refused(&out, &["TRAINER_HOST_MEMORY=\"plenty\" is not a size"]);
}

/// Past the comparison (the override says there is room) an allocation the system refuses
/// (here `ulimit -v`) is the same error, not an abort.
#[cfg(target_os = "linux")]
#[test]
fn an_allocation_the_system_refuses_is_an_error() {
    let out = Command::new("sh")
        .args([
            "-c",
            "ulimit -v 3000000 && exec \"$0\" \"$@\"",
            env!("CARGO_BIN_EXE_trainer"),
            "bench",
            "configs/mlp.toml",
            "--device",
            "cpu",
            "--set",
            "data.batch_size=50000000",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("TRAINER_HOST_MEMORY", "100000GiB")
        .output()
        .unwrap();
    refused(
        &out,
        &[
            "allocating",
            "of host memory failed",
            "lower data.batch_size",
        ],
    );
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

/// `check` on `path`, timed: the answer must come within `limit`.
fn check_within(path: &str, limit: Duration) -> Output {
    let t0 = Instant::now();
    let out = run(&["check", path]);
    assert!(t0.elapsed() < limit, "check {path} took {:?}", t0.elapsed());
    out
}

#[test]
fn megabytes_of_garbage_give_a_screenful() {
    let dir = tempfile::tempdir().unwrap();
    // 5 MB of broken lines: refused by its size, unread.
    let broken = "x = = 1\n".repeat(5_000_000 / 8);
    let big = write(dir.path(), "big.toml", &broken);
    let out = check_within(&big, Duration::from_secs(5));
    refused(
        &out,
        &[
            "big.toml",
            "4.8 MiB",
            "larger than the 1.0 MiB a config may be",
        ],
    );
    // Just under the size limit: parsed, ten errors shown and the rest counted, under a
    // 1 GiB address-space limit (a parser that kept every error would need far more).
    let broken = "x = = 1\n".repeat((1 << 20) / 8 - 16);
    let almost = write(dir.path(), "almost.toml", &broken);
    let out = if cfg!(target_os = "linux") {
        Command::new("sh")
            .args(["-c", "ulimit -v 1000000 && exec \"$0\" \"$@\""])
            .args([env!("CARGO_BIN_EXE_trainer"), "check", &almost])
            .output()
            .unwrap()
    } else {
        check_within(&almost, Duration::from_secs(20))
    };
    let err = refused(
        &out,
        &["almost.toml:1:5", "more errors not shown (the first "],
    );
    // Errors on every line; those that do not fit the screen are counted with the rest.
    let shown = err.matches("error: TOML syntax error").count();
    assert!((5..=10).contains(&shown), "{shown} errors shown:\n{err}");
    let tail = format!(" more errors not shown (the first {shown} are above)");
    let more: usize = err
        .lines()
        .find_map(|l| l.strip_prefix("error: ")?.strip_suffix(tail.as_str()))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count of the others:\n{err}"));
    assert!(more > 100_000, "{more}");
    // One line of a megabyte: located, its line not quoted.
    let line = format!("x = {}\n", "= ".repeat(400_000));
    let long = write(dir.path(), "long.toml", &line);
    let err = refused(
        &check_within(&long, Duration::from_secs(20)),
        &["--> ", "long.toml:1:", "bytes: not quoted"],
    );
    assert!(err.len() < 10_000, "{} bytes of stderr", err.len());
    // A FIFO or a device that never ends is read only up to the limit.
    #[cfg(target_os = "linux")]
    refused(
        &check_within("/dev/zero", Duration::from_secs(20)),
        &["/dev/zero: it is larger than the 1.0 MiB"],
    );
}

/// A valid config whose model is `depth` blocks, each using the next.
fn nested_blocks(depth: usize) -> String {
    let mut t = String::from(
        "[data]\ndataset = \"fashion-mnist\"\n[model]\ninput = { shape = [1, 28, 28] }\n",
    );
    for i in 0..depth {
        let body = if i + 1 < depth {
            format!("[{{ block = \"b{}\" }}]", i + 1)
        } else {
            "[{ op = \"relu\" }]".to_string()
        };
        t += &format!("[model.blocks.b{i}]\nbody = {body}\n");
    }
    t + "[[model.layers]]\nblock = \"b0\"\n[[model.layers]]\nop = \"flatten\"\n\
         [[model.layers]]\nop = \"linear\"\nout = 10\n[loss]\nkind = \"cross_entropy\"\n\
         [optimizer]\nkind = \"sgd\"\nlr = 0.1\n"
}

#[test]
fn blocks_nested_thousands_deep_are_refused_where_the_limit_is_crossed() {
    let dir = tempfile::tempdir().unwrap();
    let ok = write(dir.path(), "deep64.toml", &nested_blocks(64));
    let out = run(&["check", &ok]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    for depth in [65, 5000] {
        let path = write(
            dir.path(),
            &format!("deep{depth}.toml"),
            &nested_blocks(depth),
        );
        // The use of block b64 (the 65th level) is on line 4 + 2 * 64.
        let at = format!("deep{depth}.toml:132:19");
        let err = refused(
            &check_within(&path, Duration::from_secs(20)),
            &[
                "blocks nest more than 64 deep",
                &at,
                "`b0` -> `b1` -> `b2` -> ...",
            ],
        );
        assert!(
            err.contains("(58 more) -> `b61` -> `b62` -> `b63`"),
            "{err}"
        );
    }
}

#[test]
fn extends_chains_thousands_long_are_refused_with_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let mlp =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/mlp.toml"))
            .unwrap();
    let chain = |name: &str, files: usize| -> String {
        let sub = dir.path().join(name);
        std::fs::create_dir(&sub).unwrap();
        for i in 0..files {
            let text = match i + 1 < files {
                true => format!("extends = \"c{}.toml\"\n", i + 1),
                false => mlp.clone(),
            };
            write(&sub, &format!("c{i}.toml"), &text);
        }
        sub.join("c0.toml").to_str().unwrap().to_string()
    };
    let out = run(&["check", &chain("ok", 64)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let top = chain("long", 8000);
    let err = refused(
        &check_within(&top, Duration::from_secs(30)),
        &[
            "`extends` chain is more than 64 files deep",
            "c63.toml:1:11",
            "c0.toml -> ",
            "(59 more)",
            "c64.toml",
        ],
    );
    // The innermost extends lines are shown, not all 64.
    assert_eq!(err.matches("in the file extended here").count(), 3, "{err}");
}

/// A key the config layer refuses: `check`, `plan` and `fit` give the same error at the same
/// place, and `fit` leaves no run directory.
#[test]
fn out_of_range_values_get_one_located_error_in_every_command() {
    let cases: [(&[&str], &str); 9] = [
        (
            &["schedule.warmup_epochs=1e308"],
            "`warmup_epochs` is too large",
        ),
        (&["train.epochs=1e308"], "found floating point `1e308`"),
        (
            &["train.epochs=9223372036854775807"],
            "expected a positive integer",
        ),
        (
            &["train.max_steps=2147483648"],
            "expected a positive integer",
        ),
        (
            &["train.save_every=\"99999999999999999999 steps\""],
            "cannot read save_every",
        ),
        (&["log.every_steps=1e300"], "found floating point `1e300`"),
        (
            &["data.eval_batch_size=2147483647"],
            "`eval_batch_size` is too large",
        ),
        (
            &["schedule.kind=\"multistep\"", "schedule.milestones=[]"],
            "`milestones` is empty",
        ),
        (
            &["schedule.kind=\"onecycle\"", "schedule.max_lr=1e-9"],
            "onecycle `max_lr` = 1e-9 is below [optimizer] lr = 0.001",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (i, (sets, expect)) in cases.iter().enumerate() {
        let sets: Vec<&str> = sets.iter().flat_map(|s| ["--set", *s]).collect();
        let last = sets.len() / 2;
        let at = format!("--> --set #{last}:1:");
        let check = run(&[&["check", "configs/mlp.toml"][..], &sets].concat());
        let first = refused(&check, &[expect, &at]);
        let plan = run(&[&["plan", "configs/mlp.toml"][..], &sets].concat());
        assert_eq!(refused(&plan, &[]), first, "plan differs from check");
        let run_dir = dir.path().join(format!("run{i}"));
        let fit_args = ["fit", "configs/mlp.toml", "--device", "cpu", "--run-dir"];
        let fit = run(&[&fit_args[..], &[run_dir.to_str().unwrap()], &sets].concat());
        assert_eq!(refused(&fit, &[]), first, "fit differs from check");
        assert!(!run_dir.exists());
    }
}

/// The largest values `check` accepts are values `fit` can run with.
#[test]
fn the_largest_accepted_values_train() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let sets = [
        "data.train_limit=64",
        "data.val_limit=32",
        "data.batch_size=32",
        "train.epochs=2147483647",
        "train.max_steps=2",
        "train.save_every=\"2147483647 steps\"",
        "log.every_steps=2147483647",
        "schedule.warmup_epochs=2147483647",
    ];
    let sets: Vec<&str> = sets.iter().flat_map(|s| ["--set", *s]).collect();
    let check = run(&[&["check", "configs/mlp.toml"][..], &sets].concat());
    assert_eq!(check.status.code(), Some(0), "{}", text(&check.stderr));
    let fit_args = ["fit", "configs/mlp.toml", "--device", "cpu", "--run-dir"];
    let fit = run(&[&fit_args[..], &[run_dir.to_str().unwrap()], &sets].concat());
    assert_eq!(fit.status.code(), Some(0), "{}", text(&fit.stderr));
    assert!(run_dir.join("checkpoints/latest").exists());
}
