//! The run directory: `runs/<name>/<YYYYmmdd-HHMMSS>/` (or `--run-dir DIR`) holds
//! `config.resolved.toml` with its SHA-256, `manifest.json` (who ran what, where), `metrics.csv`,
//! TensorBoard event files, `checkpoints/` and `run.lock` (see `run_lock`: one writer at a
//! time). A resumed run writes into the same directory; a resume whose config differs from
//! config.resolved.toml is refused, listing the keys (`differences`), unless `--force`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::train::run_lock::RunLock;

pub const RESOLVED: &str = "config.resolved.toml";
pub const MANIFEST: &str = "manifest.json";

/// What is known about a run when it starts. Informational, except `config_dir` (relative
/// `data.path` values resolve against it on resume).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub trainer_version: String,
    /// The commit trainer was built from, where the build could tell.
    pub git_commit: Option<String>,
    pub config: String,
    pub config_dir: PathBuf,
    pub config_hash: String,
    pub seed: u64,
    pub device: String,
    pub adapter: Option<crate::backend::gpu::AdapterSummary>,
    pub command: Vec<String>,
    pub started: String,
}

/// A run directory being written, locked against a second writer for as long as this lives.
pub struct RunDir {
    pub path: PathBuf,
    pub config_hash: String,
    pub lock: RunLock,
}

impl RunDir {
    pub fn checkpoints(&self) -> PathBuf {
        self.path.join("checkpoints")
    }
}

/// SHA-256 (hex) of the resolved config text: what a checkpoint is tied to.
pub fn hash(resolved: &str) -> String {
    crate::checkpoint::sha256_hex(resolved.as_bytes())
}

/// The directory of a new run: `explicit`, or `<log.dir>/<run.name>/<local time>`, with a
/// `-2`, `-3`... suffix when two runs start in the same second. A generated directory is
/// created here, by a `create_dir` that fails if it exists, so two runs never pick one.
pub fn new_path(cfg: &Config, explicit: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let stamp = chrono::Local::now().format("%Y%m%d-%H%M%S").to_string();
    let base = Path::new(&cfg.log.dir).join(&cfg.run.name);
    fs::create_dir_all(&base).map_err(|e| format!("cannot create {}: {e}", base.display()))?;
    let mut path = base.join(&stamp);
    for n in 2.. {
        match fs::create_dir(&path) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                path = base.join(format!("{stamp}-{n}"));
            }
            Err(e) => return Err(format!("cannot create {}: {e}", path.display())),
            Ok(()) => break,
        }
    }
    Ok(path)
}

/// Creates the run directory, locks it and writes the resolved config and the manifest. A
/// directory another process is writing is refused with its pid; one that already holds a
/// run is refused too (resume it instead).
pub fn create(path: &Path, resolved: &str, manifest: &Manifest) -> Result<RunDir, String> {
    let io = |what: &str, e: io::Error| format!("cannot {what} {}: {e}", path.display());
    fs::create_dir_all(path).map_err(|e| io("create", e))?;
    let lock = RunLock::acquire(path)?;
    if path.join(RESOLVED).exists() {
        return Err(format!(
            "{} already holds a run; continue it with `trainer resume {}` or choose another --run-dir",
            path.display(),
            path.display()
        ));
    }
    fs::create_dir_all(path.join("checkpoints")).map_err(|e| io("create", e))?;
    crate::checkpoint::write_file(&path.join(RESOLVED), resolved.as_bytes())
        .map_err(|e| e.to_string())?;
    write_manifest(path, manifest)?;
    Ok(RunDir {
        path: path.to_path_buf(),
        config_hash: hash(resolved),
        lock,
    })
}

pub fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<(), String> {
    let text = serde_json::to_string_pretty(manifest).map_err(|e| e.to_string())? + "\n";
    crate::checkpoint::write_file(&dir.join(MANIFEST), text.as_bytes()).map_err(|e| e.to_string())
}

/// An existing run, locked for writing (a run another process is writing is refused with its
/// pid): its lock, resolved config text and manifest.
pub fn open(path: &Path) -> Result<(RunLock, String, Manifest), String> {
    let not_run = |e: String| format!("{} is not a run directory: {e}", path.display());
    // Checked before locking, so a directory that is no run gets no lock file.
    let resolved_path = path.join(RESOLVED);
    if !resolved_path.is_file() {
        return Err(not_run(format!(
            "{RESOLVED} is missing or not a regular file"
        )));
    }
    let lock = RunLock::acquire(path)?;
    let read = |name: &str| {
        let bytes = crate::checkpoint::read_regular(&path.join(name))
            .map_err(|e| not_run(e.to_string()))?;
        String::from_utf8(bytes).map_err(|e| not_run(format!("{name}: {e}")))
    };
    let resolved = read(RESOLVED)?;
    let manifest = serde_json::from_str(&read(MANIFEST)?)
        .map_err(|e| format!("{}: {e}", path.join(MANIFEST).display()))?;
    Ok((lock, resolved, manifest))
}

/// The keys whose values differ between two resolved configs, as `key: old → new` lines.
pub fn differences(old: &str, new: &str) -> Result<Vec<String>, String> {
    let parse = |text: &str| -> Result<Vec<(String, String)>, String> {
        let v: toml::Value = toml::from_str(text).map_err(|e| e.to_string())?;
        Ok(crate::config::tree::leaves(&v))
    };
    let (old, new) = (parse(old)?, parse(new)?);
    let find = |list: &[(String, String)], key: &str| {
        list.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
    };
    let mut keys: Vec<&String> = old.iter().chain(&new).map(|(k, _)| k).collect();
    keys.sort();
    keys.dedup();
    Ok(keys
        .into_iter()
        .filter_map(|k| {
            let (a, b) = (find(&old, k), find(&new, k));
            (a != b).then(|| {
                let show = |v: Option<String>| v.unwrap_or_else(|| "(absent)".into());
                format!("{k}: {} → {}", show(a), show(b))
            })
        })
        .collect())
}

/// The commit trainer was built from (set by build.rs when it could ask git).
pub fn git_commit() -> Option<String> {
    option_env!("TRAINER_GIT_COMMIT")
        .filter(|s| !s.is_empty())
        .map(String::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_name_changed_added_and_removed_keys() {
        let old = "[optimizer]\nlr = 0.1\nmomentum = 0.9\n[train]\nepochs = 3\n";
        let new = "[optimizer]\nlr = 0.05\n[train]\nepochs = 3\nmax_steps = 10\n";
        let d = differences(old, new).unwrap();
        assert_eq!(
            d,
            vec![
                "optimizer.lr: 0.1 → 0.05",
                "optimizer.momentum: 0.9 → (absent)",
                "train.max_steps: (absent) → 10",
            ]
        );
        assert!(differences(old, old).unwrap().is_empty());
    }

    #[test]
    fn hash_is_sha256_hex() {
        assert_eq!(
            hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
