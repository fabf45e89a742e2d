//! Checkpoint tests: round trip, file format, retention, corruption fallback, atomicity.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::tensors::header_json;
use super::*;

fn tensor(name: &str, shape: &[usize], data: Vec<f32>) -> NamedTensor {
    NamedTensor {
        name: name.into(),
        shape: shape.to_vec(),
        data,
        integer: false,
    }
}

/// A small checkpoint whose values depend on `step`, with the awkward floats and an integer
/// scalar, in state_dict order (not the sorted order safetensors stores).
fn sample(step: u64) -> Checkpoint {
    let s = step as f32;
    let conv: Vec<f32> = (0..18).map(|i| (i as f32 - 9.0) * 0.37 + s).collect();
    let mut weights = vec![
        tensor("conv1.weight", &[2, 1, 3, 3], conv),
        tensor("bn1.weight", &[2], vec![-0.0, f32::MIN_POSITIVE / 4.0]),
        tensor("bn1.bias", &[2], vec![f32::INFINITY, f32::NEG_INFINITY]),
        tensor("bn1.running_mean", &[2], vec![f32::MAX, -f32::MAX]),
        tensor("bn1.running_var", &[2], vec![1.0 + f32::EPSILON, s]),
        NamedTensor {
            name: "bn1.num_batches_tracked".into(),
            shape: vec![],
            data: vec![step as f32 * 10.0],
            integer: true,
        },
        tensor(
            "fc.weight",
            &[3, 2],
            (0..6).map(|i| i as f32 / 7.0).collect(),
        ),
        tensor("fc.bias", &[3], vec![0.1, -0.2, s]),
    ];
    weights.push(tensor("empty", &[0, 4], vec![]));
    let optimizer = vec![
        tensor(
            "conv1.weight.momentum_buffer",
            &[2, 1, 3, 3],
            vec![s * 1e-3; 18],
        ),
        tensor("fc.weight.exp_avg", &[3, 2], vec![1e-30; 6]),
        tensor("fc.weight.exp_avg_sq", &[3, 2], vec![1e30; 6]),
    ];
    Checkpoint {
        weights,
        optimizer,
        state: TrainState {
            format_version: FORMAT_VERSION,
            step,
            epoch: step / 3,
            batch_in_epoch: step % 3,
            seed: u64::MAX - 1,
            config_hash: "ab".repeat(32),
            best_metric: Some(0.1 + 0.2),
            best_epoch: Some(1),
            lr: 0.1 / 3.0,
            trainer_version: "0.1.0".into(),
        },
        extra: Vec::new(),
    }
}

#[test]
fn extra_files_are_saved_checksummed_and_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path(), 3);
    let mut ckpt = sample(4);
    ckpt.extra = vec![("vocab.json".into(), b"{\"size\": 2}\n".to_vec())];
    let at = store.save(&ckpt, false).unwrap();
    assert_eq!(
        std::fs::read(at.join("vocab.json")).unwrap(),
        b"{\"size\": 2}\n"
    );
    let back = crate::checkpoint::load(&at).unwrap();
    assert_eq!(back.extra, ckpt.extra);
    let weights = load_one(&at, Part::Weights).unwrap();
    assert_eq!(weights.extra, ckpt.extra);
    // A changed byte is caught like any other file's.
    std::fs::write(at.join("vocab.json"), b"{\"size\": 3}\n").unwrap();
    let e = crate::checkpoint::load(&at).unwrap_err().to_string();
    assert!(e.contains("vocab.json"), "{e}");
    // Names that would clash or leave the directory are refused before writing.
    for bad in ["state.json", "checksums.json", "../x", ".hidden", ""] {
        let mut c = sample(5);
        c.extra = vec![(bad.into(), Vec::new())];
        let e = store.save(&c, false).unwrap_err().to_string();
        assert!(e.contains("cannot keep a file named"), "{bad}: {e}");
    }
}

/// Tensors equal bit for bit (`PartialEq` on f32 would call -0.0 == 0.0 and NaN != NaN), matched
/// by name (files keep safetensors' own order).
fn assert_same_bits(a: &[NamedTensor], b: &[NamedTensor]) {
    assert_eq!(a.len(), b.len());
    let by_name = |t: &[NamedTensor]| {
        let mut v = t.to_vec();
        v.sort_by(|x, y| x.name.cmp(&y.name));
        v
    };
    for (x, y) in by_name(a).iter().zip(&by_name(b)) {
        assert_eq!(
            (&x.name, &x.shape, x.integer),
            (&y.name, &y.shape, y.integer)
        );
        let bits = |t: &NamedTensor| t.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(x), bits(y), "{}", x.name);
    }
}

/// Every file under `dir`, relative path → bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in fs::read_dir(dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).expect("prefix").to_path_buf();
                out.insert(rel, fs::read(&path).expect("read"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf8"))
        .collect();
    names.sort();
    names
}

/// The weights `resolve` finds at `path`, with no model to check them against.
fn weights_of(path: &Path) -> Result<Vec<NamedTensor>, CheckpointError> {
    resolve(path, Part::Weights, &mut |_| Ok(())).map(|found| found.checkpoint.weights)
}

fn setup() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("checkpoints");
    (tmp, dir)
}

#[test]
fn round_trip_is_bit_exact() {
    let (_tmp, dir) = setup();
    let store = Store::new(&dir, 3);
    let ckpt = sample(1234);
    let written = store.save(&ckpt, false).expect("save");
    assert_eq!(written, dir.join("step-000001234"));
    assert_eq!(store.latest_dir(), Some(written.clone()));
    let (back, warnings) = store.load_latest().expect("load");
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_same_bits(&back.weights, &ckpt.weights);
    assert_same_bits(&back.optimizer, &ckpt.optimizer);
    assert_eq!(
        back.state, ckpt.state,
        "f64 and u64 fields survive JSON exactly"
    );
    // The other entry points read the same thing.
    assert_same_bits(&load(&written).expect("load dir").weights, &ckpt.weights);
    assert_same_bits(
        &weights_of(&written).expect("weights of dir"),
        &ckpt.weights,
    );
    let via_root = load(&dir).expect("checkpoints/ stands for latest");
    assert_same_bits(&via_root.weights, &ckpt.weights);
    assert_eq!(via_root.state, ckpt.state);
    let file = load(&written.join(MODEL_FILE)).expect("load file");
    assert_same_bits(&file.weights, &ckpt.weights);
    assert!(file.optimizer.is_empty());
    assert_eq!(file.state, TrainState::default());
}

#[test]
fn header_lists_every_tensor_with_dtype_and_shape() {
    let (_tmp, dir) = setup();
    let ckpt = sample(7);
    let written = Store::new(&dir, 3).save(&ckpt, false).expect("save");
    for (file, tensors) in [
        (MODEL_FILE, &ckpt.weights),
        (OPTIMIZER_FILE, &ckpt.optimizer),
    ] {
        let bytes = fs::read(written.join(file)).expect("read");
        let header = header_json(&bytes).expect("header");
        let header = header.as_object().expect("object");
        let meta = header.get("__metadata__").expect("metadata");
        assert_eq!(meta["format"], "pt");
        assert_eq!(header.len(), tensors.len() + 1, "{file}: {header:?}");
        let mut end = 0u64;
        for t in tensors {
            let entry = header
                .get(&t.name)
                .unwrap_or_else(|| panic!("{file} lacks {}", t.name));
            let (dtype, size) = if t.integer { ("I64", 8) } else { ("F32", 4) };
            assert_eq!(entry["dtype"], dtype, "{}", t.name);
            assert_eq!(entry["shape"], serde_json::json!(t.shape), "{}", t.name);
            let offsets = entry["data_offsets"].as_array().expect("offsets");
            let (a, b) = (
                offsets[0].as_u64().expect("a"),
                offsets[1].as_u64().expect("b"),
            );
            assert_eq!(b - a, (t.data.len() * size) as u64, "{}", t.name);
            end = end.max(b);
        }
        let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
        assert_eq!(
            8 + header_len + end,
            bytes.len() as u64,
            "{file}: data fills the file"
        );
    }
    // num_batches_tracked: int64 scalar, little-endian, as PyTorch has it.
    let bytes = fs::read(written.join(MODEL_FILE)).expect("read");
    let header = header_json(&bytes).expect("header");
    let entry = &header["bn1.num_batches_tracked"];
    assert_eq!(entry["dtype"], "I64");
    assert_eq!(entry["shape"], serde_json::json!([]));
    let start = 8 + u64::from_le_bytes(bytes[..8].try_into().expect("8")) as usize;
    let a = start + entry["data_offsets"][0].as_u64().expect("a") as usize;
    assert_eq!(
        i64::from_le_bytes(bytes[a..a + 8].try_into().expect("8")),
        70
    );
}

#[test]
fn retention_keeps_last_and_best() {
    let (_tmp, dir) = setup();
    let store = Store::new(&dir, 3);
    for step in 1..=6 {
        store.save(&sample(step), step == 2).expect("save");
    }
    let expected = [
        "best",
        "latest",
        "step-000000002",
        "step-000000004",
        "step-000000005",
        "step-000000006",
    ];
    assert_eq!(names_in(&dir), expected);
    assert_eq!(
        fs::read_to_string(dir.join("latest")).expect("latest"),
        "step-000000006\n"
    );
    assert_eq!(
        fs::read_to_string(dir.join("best")).expect("best"),
        "step-000000002\n"
    );
    assert_eq!(store.latest_dir(), Some(dir.join("step-000000006")));
    assert_eq!(store.best_dir(), Some(dir.join("step-000000002")));
    // A new best moves the pointer; the old best then ages out like any other.
    store.save(&sample(7), true).expect("save");
    assert_eq!(store.best_dir(), Some(dir.join("step-000000007")));
    assert_eq!(
        names_in(&dir)[2..],
        ["step-000000005", "step-000000006", "step-000000007"]
    );
}

#[test]
fn corrupt_latest_falls_back_with_a_warning() {
    let (_tmp, dir) = setup();
    let store = Store::new(&dir, 3);
    for step in 1..=3 {
        store.save(&sample(step), false).expect("save");
    }
    // One flipped bit in the newest weights.
    let model = dir.join("step-000000003").join(MODEL_FILE);
    let mut bytes = fs::read(&model).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(&model, bytes).expect("write");
    let (ckpt, warnings) = store.load_latest().expect("fallback");
    assert_eq!(ckpt.state.step, 2);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("step-000000003/model.safetensors"),
        "{}",
        warnings[0]
    );
    assert!(warnings[0].contains("checksum mismatch"), "{}", warnings[0]);
    assert!(
        warnings[0].starts_with("checkpoint step-000000003 is unusable: "),
        "{}",
        warnings[0]
    );
    assert!(
        warnings[0].ends_with("; loaded step-000000002 instead"),
        "{}",
        warnings[0]
    );

    // A truncated state.json in step 2 as well.
    let state = dir.join("step-000000002").join(STATE_FILE);
    let text = fs::read(&state).expect("read");
    fs::write(&state, &text[..text.len() / 2]).expect("write");
    let (ckpt, warnings) = store.load_latest().expect("fallback");
    assert_eq!(ckpt.state.step, 1);
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings[1].contains("step-000000002/state.json"),
        "{}",
        warnings[1]
    );

    // A missing optimizer file in step 1: nothing left.
    fs::remove_file(dir.join("step-000000001").join(OPTIMIZER_FILE)).expect("rm");
    let err = store.load_latest().expect_err("all corrupt");
    let msg = err.to_string();
    assert!(matches!(err, CheckpointError::NoValid { .. }), "{msg}");
    for needle in [
        "step-000000003/model.safetensors: checksum mismatch",
        "step-000000002/state.json: checksum mismatch",
        "reading ",
        "step-000000001/optimizer.safetensors",
    ] {
        assert!(msg.contains(needle), "{needle:?} not in {msg}");
    }
}

#[test]
fn state_that_parses_badly_but_matches_its_checksum_is_reported() {
    // Checksums catch corruption on disk; a state.json with a checksum to match but the wrong
    // content (an older format) must still be refused by name.
    let (_tmp, dir) = setup();
    let store = Store::new(&dir, 3);
    let written = store.save(&sample(5), false).expect("save");
    let state = written.join(STATE_FILE);
    let text = fs::read_to_string(&state)
        .expect("read")
        .replace("\"format_version\": 1", "\"format_version\": 9");
    fs::write(&state, &text).expect("write");
    let sums = written.join(CHECKSUMS_FILE);
    let mut parsed: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&sums).expect("read")).expect("json");
    parsed["sha256"][STATE_FILE] = serde_json::Value::String(atomic::sha256_hex(text.as_bytes()));
    fs::write(&sums, serde_json::to_string(&parsed).expect("json")).expect("write");
    let err = load(&written).expect_err("version");
    assert!(
        err.to_string().contains("state.json: format_version 9"),
        "{err}"
    );
}

#[test]
fn latest_pointer_missing_or_dangling() {
    let (_tmp, dir) = setup();
    let store = Store::new(&dir, 3);
    store.save(&sample(1), false).expect("save");
    store.save(&sample(2), false).expect("save");
    fs::write(dir.join("latest"), "step-000000009\n").expect("write");
    let (ckpt, warnings) = store.load_latest().expect("fallback");
    assert_eq!(ckpt.state.step, 2);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with("checkpoint step-000000009 is unusable: reading ")
            && warnings[0]
                .ends_with("step-000000009: No such file or directory (os error 2); loaded step-000000002 instead"),
        "{warnings:?}"
    );
    fs::write(dir.join("latest"), "garbage\n").expect("write");
    let (ckpt, warnings) = store.load_latest().expect("newest");
    assert_eq!(ckpt.state.step, 2);
    assert!(warnings[0].ends_with("latest names `garbage`, which is not a checkpoint directory of this run (step-NNNNNNNNN); loaded the newest valid checkpoint, step-000000002"), "{warnings:?}");
    fs::remove_file(dir.join("latest")).expect("rm");
    let (ckpt, warnings) = store.load_latest().expect("newest");
    assert_eq!(ckpt.state.step, 2);
    assert!(
        warnings[0]
            .ends_with("latest is missing; loaded the newest valid checkpoint, step-000000002"),
        "{warnings:?}"
    );
    assert_eq!(store.latest_dir(), None);
    // Only a pointer, to nothing: an error, not a fresh start.
    for name in ["step-000000001", "step-000000002"] {
        fs::remove_dir_all(dir.join(name)).expect("rm");
    }
    fs::write(dir.join("latest"), "step-000000002\n").expect("write");
    let err = store.load_latest().expect_err("nothing valid");
    assert!(matches!(err, CheckpointError::NoValid { .. }), "{err}");
}

/// Every kind of broken `latest`: each is named in one short warning, the newest valid
/// checkpoint loads through every entry point, and the next save replaces the pointer.
#[test]
fn every_broken_latest_falls_back_to_the_newest_valid_and_heals_on_save() {
    let (tmp, dir) = setup();
    let store = Store::new(&dir, 5);
    for step in 1..=3 {
        store.save(&sample(step), false).expect("save");
    }
    let latest = dir.join("latest");
    let junk: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    type Breaker = Box<dyn Fn(&Path)>;
    let write = |bytes: Vec<u8>| -> Breaker {
        Box::new(move |p: &Path| fs::write(p, &bytes).expect("write"))
    };
    let cases: Vec<(&str, Breaker, &str)> = vec![
        ("deleted", Box::new(|_: &Path| {}), "latest is missing"),
        ("empty", write(Vec::new()), "latest is empty"),
        ("whitespace", write(b" \n\n".to_vec()), "latest is empty"),
        (
            "garbage",
            write(b"\x00\xffjunk\n".to_vec()),
            "latest names `\\x00\\xffjunk`, which is not a checkpoint directory of this run",
        ),
        (
            "outside",
            write(b"../../other/checkpoints/step-000000003\n".to_vec()),
            "latest names `../../other/checkpoints/step-000000003`, which is not",
        ),
        (
            "absolute",
            write(format!("{}\n", dir.join("step-000000003").display()).into_bytes()),
            "which is not a checkpoint directory of this run",
        ),
        (
            "directory",
            Box::new(|p: &Path| fs::create_dir(p).expect("mkdir")),
            "latest: is a directory, not a regular file",
        ),
        (
            "megabyte",
            write(junk.clone()),
            "latest is 1048576 bytes long, not a checkpoint name (it starts with `\\x00\\x01",
        ),
        (
            "fifo",
            Box::new(|p: &Path| {
                assert!(
                    Command::new("mkfifo")
                        .arg(p)
                        .status()
                        .expect("mkfifo")
                        .success()
                );
            }),
            "latest: is a FIFO (named pipe), not a regular file",
        ),
    ];
    for (case, break_it, expected) in cases {
        remove_any(&latest);
        break_it(&latest);
        let (ckpt, warnings) = store.load_latest().expect(case);
        assert_eq!(ckpt.state.step, 3, "{case}");
        assert_eq!(warnings.len(), 1, "{case}: {warnings:?}");
        assert!(warnings[0].contains(expected), "{case}: {warnings:?}");
        assert!(
            warnings[0].ends_with("; loaded the newest valid checkpoint, step-000000003")
                && warnings[0].len() < 400,
            "{case}: {warnings:?}"
        );
        // The run directory, its checkpoints/ and resolve's weights-only load agree.
        for path in [tmp.path(), dir.as_path()] {
            let found = resolve(path, Part::Weights, &mut |_| Ok(())).expect(case);
            assert_eq!(found.path, dir.join("step-000000003"), "{case}");
            assert_eq!(found.warnings, warnings, "{case}");
        }
    }
    // A save replaces even a directory in the pointer's place.
    remove_any(&latest);
    fs::create_dir(&latest).expect("mkdir");
    store
        .save(&sample(4), false)
        .expect("save over a directory");
    assert_eq!(
        fs::read_to_string(&latest).expect("latest"),
        "step-000000004\n"
    );
}

fn remove_any(path: &Path) {
    atomic::remove_any(path).expect("remove");
}

/// A checkpoint that verifies but that `accept` refuses (it does not fit the caller's model) is
/// passed over like a corrupt one, with the reason; when every one is refused, the error lists
/// each candidate and its reason, `latest` first.
#[test]
fn a_checkpoint_the_caller_refuses_is_passed_over() {
    let (_tmp, dir) = setup();
    let store = Store::new(&dir, 5);
    for step in 1..=3 {
        store.save(&sample(step), false).expect("save");
    }
    let reason = "does not fit this model: `fc.weight` has shape [3, 2] in the checkpoint but [2, 3] in the model";
    let mut refuse_3 = |c: &Checkpoint| match c.state.step {
        3 => Err(reason.to_string()),
        _ => Ok(()),
    };
    let found = store.resolve(Part::Whole, &mut refuse_3).expect("fallback");
    assert_eq!(found.checkpoint.state.step, 2);
    assert_eq!(found.path, dir.join("step-000000002"));
    assert_eq!(
        found.warnings,
        [format!(
            "checkpoint step-000000003 is unusable: {reason}; loaded step-000000002 instead"
        )]
    );
    // An explicitly named checkpoint is that one or an error naming it: no fallback.
    let err = resolve(&dir.join("step-000000003"), Part::Whole, &mut refuse_3).expect_err("named");
    assert!(
        err.to_string()
            .ends_with(&format!("step-000000003: {reason}")),
        "{err}"
    );
    fs::write(dir.join("latest"), "nonsense").expect("write");
    let err = store
        .resolve(Part::Weights, &mut |c| {
            Err(format!("refused {}", c.weights.len()))
        })
        .expect_err("none fits");
    let msg = err.to_string();
    let lines: Vec<&str> = msg.lines().collect();
    assert_eq!(lines.len(), 3, "{msg}");
    assert!(
        lines[0].starts_with("no valid checkpoint in ") && lines[0].ends_with("; tried:"),
        "{msg}"
    );
    assert!(lines[1].contains("latest names `nonsense`"), "{msg}");
    // The same reason for each: one line naming them all.
    assert_eq!(
        lines[2],
        "  step-000000003, step-000000002, step-000000001: refused 9"
    );
    // Different reasons: a line each, newest first.
    let err = store
        .resolve(Part::Whole, &mut |c| {
            Err(format!("refused {}", c.state.step))
        })
        .expect_err("none fits");
    let msg = err.to_string();
    let lines: Vec<&str> = msg.lines().collect();
    assert_eq!(
        lines[2..],
        [
            "  step-000000003: refused 3",
            "  step-000000002: refused 2",
            "  step-000000001: refused 1"
        ]
    );
}

#[test]
fn a_long_list_of_failures_stays_on_one_screen() {
    let (_tmp, dir) = setup();
    let store = Store::new(&dir, 40);
    for step in 1..=30 {
        store.save(&sample(step), false).expect("save");
    }
    let err = store
        .resolve(Part::Weights, &mut |_| Err("refused".into()))
        .expect_err("none fits");
    let msg = err.to_string();
    assert_eq!(msg.lines().count(), 2, "{msg}");
    assert!(
        msg.ends_with("  step-000000030, step-000000029, step-000000028 and 27 more: refused"),
        "{msg}"
    );
    let err = store
        .resolve(Part::Whole, &mut |c| {
            Err(format!("refused {}", c.state.step))
        })
        .expect_err("none fits");
    let msg = err.to_string();
    assert_eq!(msg.lines().count(), 12, "{msg}");
    assert!(
        msg.ends_with("  ... and 20 more older checkpoints"),
        "{msg}"
    );
}

/// A FIFO in place of any file of a checkpoint is refused by name at once: reads never block.
#[test]
fn a_fifo_in_a_checkpoint_is_refused_by_name() {
    let (_tmp, dir) = setup();
    let store = Store::new(&dir, 5);
    store.save(&sample(1), false).expect("save");
    let written = store.save(&sample(2), false).expect("save");
    for file in [MODEL_FILE, OPTIMIZER_FILE, STATE_FILE, CHECKSUMS_FILE] {
        let path = written.join(file);
        let kept = fs::read(&path).expect("read");
        fs::remove_file(&path).expect("rm");
        assert!(
            Command::new("mkfifo")
                .arg(&path)
                .status()
                .expect("mkfifo")
                .success()
        );
        let (ckpt, warnings) = store.load_latest().expect(file);
        assert_eq!(ckpt.state.step, 1, "{file}");
        assert!(
            warnings[0].contains(&format!(
                "step-000000002/{file}: is a FIFO (named pipe), not a regular file"
            )),
            "{file}: {warnings:?}"
        );
        let err = load(&written).expect_err(file).to_string();
        assert!(
            err.ends_with(&format!(
                "{file}: is a FIFO (named pipe), not a regular file"
            )),
            "{err}"
        );
        fs::remove_file(&path).expect("rm");
        fs::write(&path, kept).expect("restore");
    }
    let file = dir.join("weights.safetensors");
    assert!(
        Command::new("mkfifo")
            .arg(&file)
            .status()
            .expect("mkfifo")
            .success()
    );
    let err = load(&file).expect_err("fifo file").to_string();
    assert!(
        err.ends_with("weights.safetensors: is a FIFO (named pipe), not a regular file"),
        "{err}"
    );
}

#[test]
fn empty_or_missing_directory_is_not_found() {
    let (_tmp, dir) = setup();
    let store = Store::new(&dir, 3);
    assert!(matches!(
        store.load_latest(),
        Err(CheckpointError::NotFound { .. })
    ));
    fs::create_dir_all(&dir).expect("mkdir");
    assert!(matches!(
        store.load_latest(),
        Err(CheckpointError::NotFound { .. })
    ));
}

#[test]
fn stale_temp_dirs_are_ignored_then_removed() {
    let (_tmp, dir) = setup();
    let store = Store::new(&dir, 3);
    store.save(&sample(1), false).expect("save");
    // What a crash halfway through saving step 9 leaves (complete-looking files included).
    let stale = dir.join(".tmp-step-000000009");
    fs::create_dir(&stale).expect("mkdir");
    for (name, content) in snapshot(&dir.join("step-000000001")) {
        fs::write(stale.join(name), content).expect("write");
    }
    fs::write(dir.join(".tmp-latest"), "step-000000009\n").expect("write");
    let (ckpt, warnings) = store.load_latest().expect("load");
    assert_eq!(ckpt.state.step, 1);
    assert!(warnings.is_empty());
    store.save(&sample(2), false).expect("save");
    assert_eq!(
        names_in(&dir),
        ["latest", "step-000000001", "step-000000002"]
    );
}

#[test]
fn full_disk_changes_nothing_visible() {
    let (_tmp, dir) = setup();
    Store::new(&dir, 3).save(&sample(900), true).expect("save");
    let before = snapshot(&dir);
    let total: u64 = {
        let other = tempfile::tempdir().expect("tempdir");
        Store::new(other.path(), 3)
            .save(&sample(1000), true)
            .expect("save");
        // Everything a save writes ends up in a fresh directory: files, `latest`, `best`.
        snapshot(other.path())
            .values()
            .map(|b| b.len() as u64)
            .sum::<u64>()
    };
    let model_len = fs::read(dir.join("step-000000900").join(MODEL_FILE))
        .expect("read")
        .len() as u64;
    // Fail inside each file in turn: model, optimizer, state, checksums, latest, best.
    let mut seen_files = Vec::new();
    for limit in (0..total)
        .step_by(7)
        .chain([0, model_len - 1, model_len, total - 1])
    {
        let err = Store::new(&dir, 3)
            .with_write_limit(limit)
            .save(&sample(1000), true)
            .expect_err("disk full");
        let msg = err.to_string();
        assert!(msg.starts_with("writing "), "{msg}");
        assert!(
            msg.contains("No space left on device (os error 28)"),
            "{msg}"
        );
        assert!(
            msg.ends_with("; the previous checkpoint step-000000900 is intact"),
            "{msg}"
        );
        let file = msg
            .split(": ")
            .next()
            .expect("path")
            .rsplit('/')
            .next()
            .expect("name")
            .to_string();
        if !seen_files.contains(&file) {
            seen_files.push(file);
        }
        assert_eq!(snapshot(&dir), before, "limit {limit}: {msg}");
        assert_eq!(names_in(&dir), ["best", "latest", "step-000000900"]);
    }
    assert_eq!(
        seen_files,
        [
            MODEL_FILE,
            OPTIMIZER_FILE,
            STATE_FILE,
            CHECKSUMS_FILE,
            ".tmp-latest",
            ".tmp-best"
        ]
    );
    assert!(
        Store::new(&dir, 3)
            .with_write_limit(0)
            .save(&sample(1000), true)
            .is_err_and(|e| e
                .to_string()
                .contains(".tmp-step-000001000/model.safetensors: No space left on device"))
    );
    // With room enough, the same save succeeds.
    Store::new(&dir, 3)
        .with_write_limit(total)
        .save(&sample(1000), true)
        .expect("fits exactly");
    assert_eq!(
        Store::new(&dir, 3)
            .load_latest()
            .expect("load")
            .0
            .state
            .step,
        1000
    );
}

#[test]
fn first_save_failing_says_there_is_no_previous_checkpoint() {
    let (_tmp, dir) = setup();
    let err = Store::new(&dir, 3)
        .with_write_limit(100)
        .save(&sample(1), false)
        .expect_err("full");
    assert!(
        err.to_string()
            .ends_with("; there is no previous checkpoint"),
        "{err}"
    );
    assert!(names_in(&dir).is_empty());
}

#[test]
fn saving_an_existing_step_replaces_it() {
    let (_tmp, dir) = setup();
    let store = Store::new(&dir, 3);
    store.save(&sample(5), false).expect("save");
    let mut again = sample(5);
    again.weights[0].data[0] = 42.0;
    store.save(&again, false).expect("save again");
    let (back, _) = store.load_latest().expect("load");
    let conv = back.weights.iter().find(|t| t.name == "conv1.weight");
    assert_eq!(conv.expect("conv1.weight").data[0], 42.0);
    assert_eq!(names_in(&dir), ["latest", "step-000000005"]);
}

#[test]
fn bad_input_is_refused_before_touching_the_disk() {
    let (_tmp, dir) = setup();
    let store = Store::new(&dir, 3);
    type Mutation = fn(&mut Checkpoint);
    let cases: [(Mutation, &str); 6] = [
        (
            |c| c.weights[0].shape = vec![3, 3],
            "cannot save model.safetensors tensor `conv1.weight`: shape [3, 3] does not match 18 values",
        ),
        (
            |c| c.optimizer[1].name = "fc.weight.exp_avg_sq".into(),
            "cannot save optimizer.safetensors tensor `fc.weight.exp_avg_sq`: the name appears twice",
        ),
        (
            |c| c.weights[5].data[0] = 1.5,
            "`bn1.num_batches_tracked`: marked integer but holds 1.5",
        ),
        (|c| c.weights[0].name.clear(), "the name is empty"),
        (
            |c| c.state.lr = f64::NAN,
            "lr is NaN, which JSON cannot hold",
        ),
        (|c| c.state.format_version = 0, "format_version is 0"),
    ];
    for (mutate, expected) in cases {
        let mut c = sample(1);
        mutate(&mut c);
        let err = store.save(&c, false).expect_err(expected);
        assert!(err.to_string().contains(expected), "{err}");
    }
    assert!(!dir.exists());
}

#[test]
fn unsupported_dtypes_are_named() {
    let (_tmp, dir) = setup();
    fs::create_dir_all(&dir).expect("mkdir");
    // A dtype safetensors knows (F64) and one it does not (Q4).
    for dtype in ["F64", "Q4"] {
        let header =
            format!(r#"{{"layer.weight":{{"dtype":"{dtype}","shape":[1],"data_offsets":[0,8]}}}}"#);
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend(header.as_bytes());
        bytes.extend([0u8; 8]);
        let path = dir.join(format!("{dtype}.safetensors"));
        fs::write(&path, bytes).expect("write");
        let msg = weights_of(&path).expect_err("dtype").to_string();
        assert!(
            msg.ends_with(&format!(
                "{dtype}.safetensors: tensor `layer.weight` has dtype {dtype}; only F32 and I64 (integer buffers) are supported"
            )),
            "{msg}"
        );
    }
    let path = dir.join("short.safetensors");
    fs::write(&path, [1, 0, 0]).expect("write");
    let msg = load(&path).expect_err("short").to_string();
    assert!(
        msg.contains("short.safetensors: not a valid safetensors file"),
        "{msg}"
    );
    fs::write(dir.join("notes.txt"), "").expect("write");
    let msg = load(&dir.join("notes.txt"))
        .expect_err("not a checkpoint")
        .to_string();
    assert!(
        msg.ends_with("notes.txt: not a checkpoint directory or a .safetensors file"),
        "{msg}"
    );
    let msg = load(&dir.join("step-000000001"))
        .expect_err("missing")
        .to_string();
    assert!(
        msg.starts_with("reading ")
            && msg.ends_with("step-000000001: No such file or directory (os error 2)"),
        "{msg}"
    );
}

#[test]
fn a_weights_file_inside_a_checkpoint_is_verified() {
    let (_tmp, dir) = setup();
    let written = Store::new(&dir, 3).save(&sample(3), false).expect("save");
    let model = written.join(MODEL_FILE);
    let mut bytes = fs::read(&model).expect("read");
    bytes[20] ^= 0x20; // inside the JSON header: still parses as a file, not as this one
    fs::write(&model, bytes).expect("write");
    for err in [
        load(&model).expect_err("file"),
        load(&written).expect_err("dir"),
    ] {
        assert!(
            err.to_string()
                .contains("model.safetensors: checksum mismatch"),
            "{err}"
        );
    }
}

#[test]
fn step_dir_names_are_canonical() {
    assert_eq!(store::parse_step_dir("step-000001234"), Some(1234));
    assert_eq!(store::parse_step_dir("step-1234567890"), Some(1234567890));
    for bad in [
        "step-1234",
        "step-0000012345",
        "step-00000123x",
        "step--00000001",
        "latest",
    ] {
        assert_eq!(store::parse_step_dir(bad), None, "{bad}");
    }
}

/// A real full disk: a 256 KiB tmpfs, where this process may mount one (root in a container);
/// elsewhere the test returns quietly (the injected failure above covers the logic).
#[test]
fn full_tmpfs_changes_nothing_visible() {
    let mount_point = tempfile::tempdir().expect("tempdir");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(mount_point.path())
        .output()
        .is_ok_and(|o| o.status.success());
    if !mounted {
        eprintln!("notice: cannot mount a tmpfs here; skipping the real full-disk test");
        return;
    }
    /// Unmounts on the way out, panics included, before the temporary directory goes.
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mount_point.path().to_path_buf());
    let dir = mount_point.path().join("checkpoints");
    let store = Store::new(&dir, 3);
    store
        .save(&sample(900), false)
        .expect("a small checkpoint fits");
    let before = snapshot(&dir);
    let mut big = sample(1000);
    big.weights
        .push(tensor("huge", &[100_000], vec![1.0; 100_000])); // 400 kB
    let msg = store
        .save(&big, false)
        .expect_err("does not fit")
        .to_string();
    assert!(
        msg.ends_with(
            ".tmp-step-000001000/model.safetensors: No space left on device (os error 28); \
             the previous checkpoint step-000000900 is intact"
        ),
        "{msg}"
    );
    assert_eq!(snapshot(&dir), before);
    assert_eq!(store.load_latest().expect("load").0.state.step, 900);
}

/// safetensors' own Python reader agrees on names, dtypes, shapes and values. Skipped with a
/// notice when `TRAINER_PYTHON` (default python3) lacks safetensors or numpy, unless
/// `TRAINER_REQUIRE_PYTHON=1`.
#[test]
fn python_safetensors_reads_the_files() {
    let python = std::env::var("TRAINER_PYTHON").unwrap_or_else(|_| "python3".into());
    let required = std::env::var("TRAINER_REQUIRE_PYTHON").is_ok_and(|v| v == "1");
    let probe = Command::new(&python)
        .args(["-c", "import safetensors.numpy, numpy"])
        .output();
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        let why = match &probe {
            Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
            Err(e) => e.to_string(),
        };
        assert!(
            !required,
            "TRAINER_REQUIRE_PYTHON=1 but {python} cannot import safetensors, numpy: {why}"
        );
        eprintln!("notice: skipping the Python safetensors check ({python}: {why})");
        return;
    }
    let (_tmp, dir) = setup();
    let ckpt = sample(11);
    let written = Store::new(&dir, 3).save(&ckpt, false).expect("save");
    let script = r#"
import json, sys
import numpy as np
from safetensors.numpy import load_file
out = {}
for path in sys.argv[1:]:
    for name, a in load_file(path).items():
        out[name] = [str(a.dtype), list(a.shape), [repr(float(v)) for v in a.astype(np.float64).ravel()]]
print(json.dumps(out))
"#;
    let output = Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(written.join(MODEL_FILE))
        .arg(written.join(OPTIMIZER_FILE))
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: BTreeMap<String, (String, Vec<usize>, Vec<String>)> =
        serde_json::from_slice(&output.stdout).expect("json");
    let all: Vec<&NamedTensor> = ckpt.weights.iter().chain(&ckpt.optimizer).collect();
    assert_eq!(seen.len(), all.len());
    for t in all {
        let (dtype, shape, values) = &seen[&t.name];
        assert_eq!(
            dtype,
            if t.integer { "int64" } else { "float32" },
            "{}",
            t.name
        );
        assert_eq!(shape, &t.shape, "{}", t.name);
        // Python's repr of each value, parsed back: exact for every f32 (as f64), -0.0 included.
        let theirs: Vec<u64> = values
            .iter()
            .map(|v| v.parse::<f64>().expect("float").to_bits())
            .collect();
        let ours: Vec<u64> = t.data.iter().map(|&v| (v as f64).to_bits()).collect();
        assert_eq!(theirs, ours, "{}", t.name);
    }
}
