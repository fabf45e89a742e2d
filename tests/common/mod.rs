//! What several integration tests share: running the binary, finding Python with the modules a
//! check needs, and the GPU-or-skip rule.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

/// A Python interpreter that can import every one of `modules`: `TRAINER_PYTHON` (scripts/test.sh
/// points it at a venv it fills), else `python3`. Without one the check is skipped with a notice,
/// unless `TRAINER_REQUIRE_PYTHON=1` (CI), which makes that a failure.
pub fn python(modules: &[&str]) -> Option<PathBuf> {
    let py = std::env::var_os("TRAINER_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("python3"));
    let import = format!("import {}", modules.join(", "));
    let ok = Command::new(&py)
        .args(["-c", &import])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(py);
    }
    let why = format!(
        "{} cannot `{import}` (scripts/test.sh installs them into target/py)",
        py.display()
    );
    if std::env::var("TRAINER_REQUIRE_PYTHON").is_ok_and(|v| v == "1") {
        panic!("TRAINER_REQUIRE_PYTHON=1 but {why}");
    }
    eprintln!("NOTICE: skipping a Python check: {why}");
    None
}

/// True where a GPU adapter (lavapipe counts) exists; see `trainer::backend::gpu::test_gpu`.
pub fn gpu_or_skip() -> bool {
    trainer::backend::gpu::test_gpu().is_some()
}

/// `trainer ARGS` run from the project root, waited for.
pub fn trainer(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run trainer")
}

/// The stdout of `trainer ARGS`, which must exit 0.
pub fn ok_stdout(args: &[&str]) -> String {
    let out = trainer(args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "trainer {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}
