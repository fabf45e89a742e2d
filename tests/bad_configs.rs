//! Every config under tests/configs/bad/ is broken on purpose. `trainer check` must reject each
//! with a diagnostic a user can act on: exit code 2, nothing on stdout, `error: ...` on stderr
//! with the expected text and primary location, and never a panic; `check --json` must give
//! the same errors as a JSON object on stdout.
//!
//! A case states its expectations in comment lines at the top of the file:
//!
//! ```toml
//! # expect: unknown key `strid`      (a substring of stderr; repeatable)
//! # at: 12:3                         (the primary location, line:column in this file)
//! # args: --set optimizer.lr=0.5     (extra arguments, split at whitespace; optional)
//! ```
//!
//! `at` may also name another file relative to this folder (`support/base.toml:2:5`) or a
//! `--set` argument (`--set #1:1:14`). Files under support/ are helpers, not cases.

use std::path::Path;
use std::process::Command;

const DIR: &str = "tests/configs/bad";

struct Case {
    expects: Vec<String>,
    at: Option<String>,
    args: Vec<String>,
}

fn read_case(text: &str) -> Case {
    let mut case = Case {
        expects: Vec::new(),
        at: None,
        args: Vec::new(),
    };
    for line in text.lines().take_while(|l| l.starts_with('#')) {
        let line = line.trim_start_matches('#').trim();
        if let Some(e) = line.strip_prefix("expect:") {
            case.expects.push(e.trim().to_string());
        } else if let Some(a) = line.strip_prefix("at:") {
            case.at = Some(a.trim().to_string());
        } else if let Some(a) = line.strip_prefix("args:") {
            case.args = a.split_whitespace().map(String::from).collect();
        }
    }
    case
}

/// What the `-->` line of the primary location must say.
fn location(path: &str, at: &str) -> String {
    let is_line_col = at.split(':').count() == 2
        && at
            .split(':')
            .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    if is_line_col {
        format!("{path}:{at}")
    } else if at.starts_with("--set") {
        at.to_string()
    } else {
        format!("{DIR}/{at}")
    }
}

/// Everything wrong with one case's run (empty if it behaved), and its stderr.
fn check(path: &str, case: &Case) -> (Vec<String>, String) {
    let mut problems = Vec::new();
    if case.expects.is_empty() {
        problems.push("the case has no `# expect:` line".to_string());
    }
    let out = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg("check")
        .arg(path)
        .args(&case.args)
        .output()
        .expect("run trainer");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.code() != Some(2) {
        problems.push(format!("exit code {:?}, expected 2", out.status.code()));
    }
    if !stdout.is_empty() {
        problems.push(format!("stdout is not empty:\n{stdout}"));
    }
    if !stderr.starts_with("error:") {
        problems.push("stderr does not start with `error:`".to_string());
    }
    for bad in ["panicked", "internal error"] {
        if stderr.contains(bad) {
            problems.push(format!("stderr says {bad:?}"));
        }
    }
    for e in &case.expects {
        if !stderr.contains(e.as_str()) {
            problems.push(format!("stderr lacks {e:?}"));
        }
    }
    match &case.at {
        None => problems.push("the case has no `# at:` line".to_string()),
        Some(at) => {
            let want = location(path, at);
            // The first `-->` is the primary location of the first error.
            let primary = stderr
                .lines()
                .find_map(|l| l.trim_start().strip_prefix("--> "))
                .unwrap_or("(none)");
            if primary != want {
                problems.push(format!("primary location is {primary}, expected {want}"));
            }
        }
    }
    (problems, stderr)
}

/// Everything wrong with the case under `check --json`: exit 2 and on stdout one JSON object,
/// `ok: false`, whose errors say the expected texts and whose first error is at the case's
/// primary location.
fn check_json(path: &str, case: &Case) -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["check", path, "--json"])
        .args(&case.args)
        .output()
        .expect("run trainer");
    let mut problems = Vec::new();
    if out.status.code() != Some(2) {
        problems.push(format!(
            "--json: exit code {:?}, expected 2",
            out.status.code()
        ));
    }
    let v: serde_json::Value = match serde_json::from_slice(&out.stdout) {
        Ok(v) => v,
        Err(e) => {
            let stdout = String::from_utf8_lossy(&out.stdout);
            problems.push(format!("--json: stdout is not JSON ({e}):\n{stdout}"));
            return problems;
        }
    };
    if v["ok"] != false || v["config"] != path {
        problems.push(format!("--json: `ok` or `config` wrong in {v}"));
    }
    let errors = v["errors"].as_array().cloned().unwrap_or_default();
    if errors.is_empty() {
        problems.push("--json: no errors listed".into());
    }
    let place = |v: &serde_json::Value| {
        format!("{}:{}:{}", v["file"], v["line"], v["column"]).replace('"', "")
    };
    // What stderr shows, as the JSON says it: texts and `file:line:column` of every label.
    let mut said = Vec::new();
    for e in &errors {
        said.push(e["message"].as_str().unwrap_or_default().to_string());
        for l in e["labels"].as_array().into_iter().flatten() {
            said.push(format!(
                "{} {}",
                place(l),
                l["text"].as_str().unwrap_or_default()
            ));
        }
        for n in e["notes"].as_array().into_iter().flatten() {
            said.push(n.as_str().unwrap_or_default().to_string());
        }
    }
    let said = said.join("\n");
    for e in &case.expects {
        if !said.contains(e.as_str()) {
            problems.push(format!("--json: no error says {e:?}"));
        }
    }
    if let (Some(at), Some(first)) = (&case.at, errors.first()) {
        let (got, want) = (place(first), location(path, at));
        if got != want {
            problems.push(format!("--json: first error at {got}, expected {want}"));
        }
    }
    problems
}

#[test]
fn every_bad_config_is_rejected_with_its_diagnostic() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(DIR);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("read tests/configs/bad")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n.ends_with(".toml"))
        .collect();
    names.sort();
    assert!(
        names.len() >= 30,
        "only {} cases in {DIR}: the corpus should have at least 30",
        names.len()
    );
    let mut failures = Vec::new();
    for name in &names {
        let path = format!("{DIR}/{name}");
        let text = std::fs::read_to_string(dir.join(name)).expect("read case");
        let case = read_case(&text);
        let (mut problems, stderr) = check(&path, &case);
        problems.extend(check_json(&path, &case));
        if !problems.is_empty() {
            failures.push(format!(
                "{path} {}\n  - {}\n--- stderr ---\n{stderr}",
                case.args.join(" "),
                problems.join("\n  - "),
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} bad configs misbehaved:\n\n{}",
        failures.len(),
        names.len(),
        failures.join("\n")
    );
}
