//! What several integration tests share: finding Python with the modules a check needs, and
//! the GPU-or-skip rule.

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
