//! The GPU through the binary: adapter listing, device selection, and limits refused with a
//! clear message instead of a crash.

use std::process::Command;

use trainer::backend::gpu::test_gpu;

fn trainer(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_trainer"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

const GPU_BENCH: &[&str] = &["bench", "configs/mlp.toml", "--device", "gpu"];

#[test]
fn devices_lists_the_adapters_with_limits() {
    if test_gpu().is_none() {
        return;
    }
    let (code, out, err) = trainer(&["devices", "--json"], &[]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let first = &v.as_array().expect("a list")[0];
    for key in [
        "name",
        "backend",
        "driver",
        "max_storage_buffer_binding_size",
        "features",
    ] {
        assert!(!first[key].is_null(), "{key} missing in {first}");
    }
}

#[test]
fn no_adapter_is_an_error_for_gpu_and_a_notice_for_auto() {
    // No adapter can exist for a backend this platform lacks.
    let none = [("WGPU_BACKEND", if cfg!(windows) { "metal" } else { "dx12" })];
    let (code, _, err) = trainer(&[GPU_BENCH, &["--steps", "1"]].concat(), &none);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no GPU adapter found"), "{err}");
    let (code, out, err) = trainer(&["bench", "configs/mlp.toml", "--steps", "1"], &none);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("note: running on the CPU"), "{err}");
    assert!(out.contains(": cpu at batch"), "{out}");
}

#[test]
fn a_tensor_above_the_binding_limit_is_refused_by_name() {
    let Some(gpu) = test_gpu() else { return };
    // configs/mlp.toml's input is 784 floats a sample: pick a batch just past the limit.
    let limit = gpu.limits.max_storage_buffer_binding_size;
    let batch = (limit / (784 * 4) + 1).to_string();
    let (code, _, err) = trainer(
        &[GPU_BENCH, &["--steps", "1", "--batch", &batch]].concat(),
        &[],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("above the adapter's storage binding limit"),
        "{err}"
    );
    assert!(
        err.contains(&format!("[{batch}, 1, 28, 28]")) || err.contains(&format!("[{batch}, 784]")),
        "{err}"
    );
}

/// A misspelled `WGPU_BACKEND` is refused with did-you-mean wherever a GPU may be opened
/// (never read as "no GPU here", which `auto` would turn into a quiet CPU run); a CPU run
/// does not look at it.
#[test]
fn an_unknown_wgpu_backend_is_refused_with_did_you_mean() {
    for (value, hint) in [("vulkn", "vulkan"), ("metal,dx13", "dx12"), ("GLL", "gl")] {
        let env = [("WGPU_BACKEND", value)];
        for args in [
            &["devices"][..],
            &["devices", "--json"],
            &["bench", "configs/mlp.toml", "--steps", "1", "--batch", "2"],
            &[GPU_BENCH, &["--steps", "1", "--batch", "2"]].concat(),
        ] {
            let (code, out, err) = trainer(args, &env);
            assert_eq!(code, 2, "{value} {args:?}: {err}");
            assert!(out.is_empty(), "{value} {args:?}: {out}");
            assert!(
                err.contains("is not a wgpu backend")
                    && err.contains(&format!("did you mean `{hint}`?"))
                    && err.lines().count() <= 3,
                "{value} {args:?}: {err}"
            );
        }
    }
    let cpu = ["bench", "configs/mlp.toml", "--steps", "1", "--batch", "2"];
    let (code, _, err) = trainer(
        &[&cpu[..], &["--device", "cpu"]].concat(),
        &[("WGPU_BACKEND", "vulkn")],
    );
    assert_eq!(code, 0, "{err}");
}

/// Headless (XDG_RUNTIME_DIR unset, or not an absolute directory), Mesa's drivers print
/// "XDG_RUNTIME_DIR is invalid or not set" on every probe: trainer gives itself a private
/// runtime directory (0700, under the temp dir) first, so nothing is printed.
#[test]
fn no_runtime_dir_noise_on_headless_machines() {
    if test_gpu().is_none() {
        return;
    }
    for xdg in [None, Some(""), Some("relative/dir"), Some("/no/such/dir")] {
        let tmp = tempfile::tempdir().unwrap();
        let bench = [GPU_BENCH, &["--steps", "1", "--batch", "2"]].concat();
        for args in [&["devices"][..], &bench] {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_trainer"));
            cmd.args(args).env("TMPDIR", tmp.path());
            match xdg {
                None => cmd.env_remove("XDG_RUNTIME_DIR"),
                Some(v) => cmd.env("XDG_RUNTIME_DIR", v),
            };
            let out = cmd.output().expect("runs");
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(0), "{xdg:?} {args:?}: {err}");
            assert!(!err.contains("XDG_RUNTIME_DIR"), "{xdg:?} {args:?}: {err}");
        }
        let made: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("trainer-runtime-")
            })
            .collect();
        assert_eq!(made.len(), 1, "{xdg:?}: one private runtime dir");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = made[0].metadata().unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{xdg:?}");
        }
    }
}
