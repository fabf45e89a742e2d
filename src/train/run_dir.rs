//! The run directory: `runs/<name>/<YYYYmmdd-HHMMSS>/` (or `--run-dir DIR`) holds
//! `config.resolved.toml` with its SHA-256, `manifest.json` (who ran what, where), `metrics.csv`,
//! TensorBoard event files and `checkpoints/`. A resumed run writes into the same directory.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Config;

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

/// A run directory being written.
pub struct RunDir {
    pub path: PathBuf,
    pub config_hash: String,
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

/// Picks the directory of a new run: `explicit`, or `<log.dir>/<run.name>/<local time>`, with a
/// `-2`, `-3`... suffix when two runs start in the same second.
pub fn new_path(cfg: &Config, explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    let stamp = chrono::Local::now().format("%Y%m%d-%H%M%S").to_string();
    let base = Path::new(&cfg.log.dir).join(&cfg.run.name);
    let mut path = base.join(&stamp);
    let mut n = 2;
    while path.exists() {
        path = base.join(format!("{stamp}-{n}"));
        n += 1;
    }
    path
}

/// Creates the run directory and writes the resolved config and the manifest. An explicit
/// directory that already holds a run is refused (resume it instead).
pub fn create(path: &Path, resolved: &str, manifest: &Manifest) -> Result<RunDir, String> {
    if path.join(RESOLVED).exists() {
        return Err(format!(
            "{} already holds a run; continue it with `trainer resume {}` or choose another --run-dir",
            path.display(),
            path.display()
        ));
    }
    let io = |what: &str, e: std::io::Error| format!("cannot {what} {}: {e}", path.display());
    std::fs::create_dir_all(path.join("checkpoints")).map_err(|e| io("create", e))?;
    crate::checkpoint::write_file(&path.join(RESOLVED), resolved.as_bytes())
        .map_err(|e| e.to_string())?;
    write_manifest(path, manifest)?;
    Ok(RunDir {
        path: path.to_path_buf(),
        config_hash: hash(resolved),
    })
}

pub fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<(), String> {
    let text = serde_json::to_string_pretty(manifest).map_err(|e| e.to_string())? + "\n";
    crate::checkpoint::write_file(&dir.join(MANIFEST), text.as_bytes()).map_err(|e| e.to_string())
}

/// An existing run: its resolved config text and manifest.
pub fn open(path: &Path) -> Result<(String, Manifest), String> {
    let read = |name: &str| {
        std::fs::read_to_string(path.join(name)).map_err(|e| {
            format!(
                "{} is not a run directory: cannot read {name}: {e}",
                path.display()
            )
        })
    };
    let resolved = read(RESOLVED)?;
    let manifest = serde_json::from_str(&read(MANIFEST)?)
        .map_err(|e| format!("{}: {e}", path.join(MANIFEST).display()))?;
    Ok((resolved, manifest))
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
