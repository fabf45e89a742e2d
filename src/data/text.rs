//! `text` data for language models: a UTF-8 file, or a folder of files concatenated in sorted
//! name order (gzip or raw, told apart by the magic bytes; each checked against its folder's
//! SHA256SUMS, by name without `.gz`), turned into token ids by a [`Vocab`].
//!
//! - Vocabulary: `char` gives each Unicode character of the text an id, in sorted order of the
//!   characters (nanoGPT's shakespeare_char/prepare.py: `sorted(set(data))`, of the whole text,
//!   so every character of the held-out tail has an id too); `byte` gives each byte its value
//!   (256 ids, any file). It is written as `vocab.json` in the run directory and in every
//!   checkpoint, so generation decodes ids and encodes a prompt as the run did.
//! - Splits: the last `val_split` of the tokens is validation (nanoGPT: the first
//!   ⌊0.9·n⌋ tokens train); each side must hold a window of `block_size + 1` tokens.
//! - A window is `block_size + 1` consecutive tokens w: input w[..T], labels w[1..] (the next
//!   token at each position). Training: an epoch is ⌊(train tokens − 1) / T⌋ windows (as many
//!   as fit side by side, capped by `train_limit`), drawn at uniform random offsets like
//!   nanoGPT's `get_batch`, a pure function of (seed, epoch) (`epoch_starts`); without
//!   `shuffle`, the side-by-side windows in order. Validation: the tail's side-by-side windows
//!   in order (capped by `val_limit`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::DataError;
pub use super::vocab::{VOCAB_FILE, Vocab};
use super::windows::Windows;
use super::{checksum, idx};
use crate::config::sections::Tokenizer;
use crate::diag::Diagnostic;
use crate::graph::Graph;
use crate::host_memory;
use crate::ops::OpKind;
use crate::tensor::DType;

/// The model against the vocabulary of its text: every embedding that reads the input ids
/// must have exactly `vocab.len()` rows and, with cross-entropy, the output exactly that many
/// logits a position; a mismatch names the layer, at its line, and both numbers.
/// `source` says where the vocabulary came from.
pub fn check_model(g: &Graph, vocab: &Vocab, source: &str) -> Result<(), Diagnostic> {
    let n = vocab.len();
    let what = match vocab.tokenizer() {
        Tokenizer::Char => format!("{n} characters"),
        Tokenizer::Byte => "256 byte values".to_string(),
    };
    let fix = |key: &str| format!("set {key} = {n}: one id per symbol of the vocabulary");
    for id in g.dag.node_indices() {
        let node = g.node(id);
        if !matches!(node.op, OpKind::Gather(_)) || node.inputs.get(1) != Some(&g.features) {
            continue;
        }
        let rows = g.ty(node.inputs[0]).shape[0];
        if rows != n {
            let layer = &g.layers[node.layer];
            return Err(Diagnostic::new(format!(
                "embedding `{}` has vocab = {rows}, but the vocabulary of the text has {what}",
                layer.name
            ))
            .at(layer.loc, format!("vocab = {rows}"))
            .note(fix("vocab"))
            .note(format!("the vocabulary is that of {source}")));
        }
    }
    if g.ty(g.labels).dtype == DType::I32 {
        let logits = g.ty(g.output).shape.last().copied().unwrap_or(0);
        if logits != n {
            let layer = &g.layers[g.node(g.output.node()).layer];
            return Err(Diagnostic::new(format!(
                "the model output `{}` gives {logits} logits a position, but the vocabulary of \
                 the text has {what}",
                layer.name
            ))
            .at(layer.loc, format!("{logits} logits"))
            .note(fix("its out"))
            .note(format!("the vocabulary is that of {source}")));
        }
    }
    Ok(())
}

/// A text read whole: its tokens and vocabulary.
pub(crate) struct Text {
    pub tokens: Vec<u32>,
    pub vocab: Vocab,
    /// The file or folder, for messages.
    pub path: PathBuf,
    /// The files read, in order.
    pub files: usize,
}

/// The files of `path`: the file itself, or a folder's regular files in sorted name order
/// (hidden files and SHA256SUMS left out).
fn files_of(path: &Path) -> Result<Vec<PathBuf>, DataError> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => DataError::Missing {
            path: path.to_path_buf(),
            hint: "set data.path to a UTF-8 text file or a folder of them".into(),
        },
        _ => DataError::io(path, e),
    })?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(|e| DataError::io(path, e))? {
        let entry = entry.map_err(|e| DataError::io(path, e))?;
        let name = entry.file_name();
        let shown = name.to_string_lossy();
        if shown.starts_with('.') || shown == "SHA256SUMS" {
            continue;
        }
        let p = entry.path();
        if std::fs::metadata(&p).is_ok_and(|m| m.is_file()) {
            files.push((name, p));
        }
    }
    if files.is_empty() {
        return Err(DataError::format(
            path,
            "the folder holds no files; text data needs at least one UTF-8 file (hidden files \
             and SHA256SUMS are not read)",
        ));
    }
    files.sort();
    Ok(files.into_iter().map(|(_, p)| p).collect())
}

/// Reads the text at `path` and makes its tokens. Errors name the file: not UTF-8 (with the
/// byte offset, `char` only), a checksum mismatch, nothing to read.
pub(crate) fn read(path: &Path, tokenizer: Tokenizer) -> Result<Text, DataError> {
    let files = files_of(path)?;
    let mut all: Vec<u8> = Vec::new();
    for f in &files {
        let dir = f.parent().unwrap_or(Path::new("."));
        let sums = checksum::read_sums(dir)?;
        let bytes = idx::read_maybe_gz(f)?;
        let name = f.file_name().map(|n| n.to_string_lossy().into_owned());
        let key = name.as_deref().map(|n| n.strip_suffix(".gz").unwrap_or(n));
        checksum::verify(f, &bytes, key.and_then(|k| sums.get(k)))?;
        if tokenizer == Tokenizer::Char
            && let Err(e) = std::str::from_utf8(&bytes)
        {
            let gz = match f.extension().is_some_and(|x| x == "gz") {
                true => " of the uncompressed text",
                false => "",
            };
            return Err(DataError::format(
                f,
                format!(
                    "not UTF-8: the byte at offset {}{gz} does not continue a character \
                     (the char tokenizer reads UTF-8 text; tokenizer = \"byte\" reads any file)",
                    e.valid_up_to()
                ),
            ));
        }
        all.try_reserve(bytes.len()).map_err(|_| {
            DataError::Config(format!(
                "not enough host memory for the text of {}",
                path.display()
            ))
        })?;
        all.extend_from_slice(&bytes);
    }
    if all.is_empty() {
        return Err(DataError::format(
            path,
            "empty: there is no text to train on",
        ));
    }
    let short = |e: host_memory::Shortage| {
        DataError::Config(format!(
            "not enough host memory for the tokens of {}: {e}",
            path.display()
        ))
    };
    let (tokens, vocab) = match tokenizer {
        Tokenizer::Byte => {
            let mut t = host_memory::try_reserved(all.len()).map_err(short)?;
            t.extend(all.iter().map(|&b| u32::from(b)));
            (t, Vocab::bytes())
        }
        Tokenizer::Char => {
            // Each file was checked above, so the concatenation is UTF-8 too.
            let text =
                String::from_utf8(all).map_err(|e| DataError::format(path, e.to_string()))?;
            let vocab = Vocab::chars_of(&text);
            let mut t = host_memory::try_reserved(text.chars().count()).map_err(short)?;
            t.extend(text.chars().map(|c| vocab.id_of(c).unwrap_or(0)));
            (t, vocab)
        }
    };
    Ok(Text {
        tokens,
        vocab,
        path: path.to_path_buf(),
        files: files.len(),
    })
}

/// The training windows and the validation windows of `text`: the last `val_frac` of the
/// tokens held out. Each side must hold one window of `block + 1` tokens.
pub(crate) fn split(
    text: Text,
    block: usize,
    val_frac: f64,
    train_limit: Option<usize>,
    val_limit: Option<usize>,
) -> Result<(Windows, Windows, String), DataError> {
    let n = text.tokens.len();
    let n_train = (n as f64 * (1.0 - val_frac)).floor() as usize;
    let unit = match text.vocab.tokenizer() {
        Tokenizer::Char => "characters",
        Tokenizer::Byte => "bytes",
    };
    let need = block + 1;
    for (part, have) in [
        (
            "the training part (the text before the held-out tail)",
            n_train,
        ),
        ("the held-out tail (val_split)", n - n_train),
    ] {
        if have < need {
            return Err(DataError::format(
                &text.path,
                format!(
                    "{part} has {have} {unit} of {n}, fewer than one window of block_size + 1 \
                     = {need}; use more text, a smaller block_size or another val_split"
                ),
            ));
        }
    }
    let vocab = Arc::new(text.vocab);
    let tokens = Arc::new(text.tokens);
    let side_by_side = |len: usize| (len - 1) / block;
    let cap = |w: usize, limit: Option<usize>| limit.map_or(w, |l| w.min(l));
    let train = Windows {
        tokens: tokens.clone(),
        start: 0,
        end: n_train,
        block,
        stride: 1,
        len: n_train - block,
        per_epoch: cap(side_by_side(n_train), train_limit),
        shape: vec![block],
        vocab: vocab.clone(),
    };
    let val_windows = cap(side_by_side(n - n_train), val_limit);
    let val = Windows {
        tokens,
        start: n_train,
        end: n,
        block,
        stride: block,
        len: val_windows,
        per_epoch: val_windows,
        shape: vec![block],
        vocab,
    };
    let files = match text.files {
        1 => String::new(),
        f => format!(", {f} files"),
    };
    let source = format!(
        "{n} {unit}{files}, vocabulary {}; {} train tokens ({} windows of {block} an epoch), \
         {} validation tokens ({} windows)",
        train.vocab.len(),
        train.end - train.start,
        train.per_epoch,
        val.end - val.start,
        val.len
    );
    Ok((train, val, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str, tokenizer: Tokenizer) -> Text {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.txt");
        std::fs::write(&p, s).unwrap();
        read(&p, tokenizer).unwrap()
    }

    #[test]
    fn char_vocab_is_the_sorted_set_and_round_trips() {
        let t = text("hello, wörld\n", Tokenizer::Char);
        let v = &t.vocab;
        assert_eq!(v.len(), 11);
        assert_eq!(v.decode(&[0, 1]).unwrap(), "\n ");
        assert_eq!(v.decode(&t.tokens).unwrap(), "hello, wörld\n");
        assert_eq!(v.encode("wörld").unwrap(), t.tokens[7..12]);
        let e = v.encode("hex").unwrap_err();
        assert!(
            e.contains("'x' (character 2) is not in the vocabulary"),
            "{e}"
        );
        assert!(v.decode(&[11]).unwrap_err().contains("id 11 is outside"));
        assert_eq!(
            (v.show(0), v.show(1), v.show(2)),
            ("\\n".into(), "' '".into(), ",".into())
        );
        let back = Vocab::from_json(&v.to_json()).unwrap();
        assert_eq!(&back, v);
    }

    #[test]
    fn byte_vocab_has_256_ids_and_reads_any_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b");
        std::fs::write(&p, [0xffu8, 0, b'a']).unwrap();
        let t = read(&p, Tokenizer::Byte).unwrap();
        assert_eq!(t.tokens, [255, 0, 97]);
        assert_eq!(t.vocab.len(), 256);
        assert_eq!(t.vocab.encode("é").unwrap(), [0xc3, 0xa9]);
        assert_eq!(t.vocab.decode(&[0xc3, 0xa9, 0xc3]).unwrap(), "é\u{fffd}");
        assert_eq!(Vocab::from_json(&t.vocab.to_json()).unwrap(), t.vocab);
        // The char tokenizer refuses it, naming the offset.
        let e = read(&p, Tokenizer::Char).err().unwrap().to_string();
        assert!(e.contains("not UTF-8: the byte at offset 0"), "{e}");
    }

    #[test]
    fn bad_vocab_files_are_refused() {
        for (json, want) in [
            (
                r#"{"format_version":1,"tokenizer":"char","size":2,"symbols":["b","a"]}"#,
                "sorted",
            ),
            (
                r#"{"format_version":1,"tokenizer":"char","size":3,"symbols":["a","b"]}"#,
                "size is 3",
            ),
            (
                r#"{"format_version":1,"tokenizer":"char","size":1,"symbols":["ab"]}"#,
                "one character",
            ),
            (
                r#"{"format_version":2,"tokenizer":"byte","size":256}"#,
                "format_version is 2",
            ),
            (
                r#"{"format_version":1,"tokenizer":"byte","size":256,"x":1}"#,
                "unknown field",
            ),
        ] {
            let e = Vocab::from_json(json).unwrap_err();
            assert!(e.contains(want), "{json}: {e}");
        }
    }

    #[test]
    fn save_and_load_through_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let v = Vocab::chars_of("abc");
        v.save(dir.path()).unwrap();
        assert!(dir.path().join(VOCAB_FILE).is_file());
        assert_eq!(Vocab::load(dir.path()).unwrap(), v);
        std::fs::write(dir.path().join(VOCAB_FILE), "{").unwrap();
        let e = Vocab::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("vocab.json"), "{e}");
    }

    #[test]
    fn a_folder_is_its_files_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.txt"), "BB").unwrap();
        std::fs::write(dir.path().join("a.txt"), "aa").unwrap();
        std::fs::write(dir.path().join(".hidden"), "zz").unwrap();
        let t = read(dir.path(), Tokenizer::Char).unwrap();
        assert_eq!(t.vocab.decode(&t.tokens).unwrap(), "aaBB");
        assert_eq!(t.files, 2);
        let empty = tempfile::tempdir().unwrap();
        std::fs::write(empty.path().join("SHA256SUMS"), "").unwrap();
        let e = read(empty.path(), Tokenizer::Char)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("holds no files"), "{e}");
    }

    #[test]
    fn gzip_and_checksums_are_honoured() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(b"abcabc").unwrap();
        std::fs::write(dir.path().join("t.txt.gz"), gz.finish().unwrap()).unwrap();
        let t = read(dir.path(), Tokenizer::Char).unwrap();
        assert_eq!(t.tokens, [0, 1, 2, 0, 1, 2]);
        let sum = crate::checkpoint::sha256_hex(b"abcabc");
        std::fs::write(dir.path().join("SHA256SUMS"), format!("{sum}  t.txt\n")).unwrap();
        assert!(read(dir.path(), Tokenizer::Char).is_ok());
        let wrong = "0".repeat(64);
        std::fs::write(dir.path().join("SHA256SUMS"), format!("{wrong}  t.txt\n")).unwrap();
        let e = read(dir.path(), Tokenizer::Char).err().unwrap().to_string();
        assert!(e.contains("t.txt.gz: checksum mismatch"), "{e}");
    }

    #[test]
    fn splits_hold_out_the_tail_in_windows() {
        // 41 tokens: 0..40 as bytes, so a token is its position.
        let bytes: String = (0..41u8).map(|b| (b'0' + b) as char).collect();
        let t = text(&bytes, Tokenizer::Byte);
        let (train, val, _) = split(t, 4, 0.25, None, None).unwrap();
        // ⌊41 · 0.75⌋ = 30 train tokens, 11 in the tail.
        assert_eq!((train.len(), train.per_epoch()), (26, 7));
        assert_eq!(val.len(), 2);
        let pos = |ids: &[u32]| ids.iter().map(|&i| i - 48).collect::<Vec<_>>();
        assert_eq!(pos(val.input(1)), [34, 35, 36, 37]);
        assert_eq!(pos(val.labels(1)), [35, 36, 37, 38]);
        assert_eq!(pos(train.input(25)), [25, 26, 27, 28]);
        assert_eq!(pos(train.labels(25)), [26, 27, 28, 29]);
        // Random windows are a pure function of (seed, epoch), all inside the training part.
        let a = train.epoch_starts(3, 1, true);
        assert_eq!(a, train.epoch_starts(3, 1, true));
        assert_ne!(a, train.epoch_starts(3, 2, true));
        assert_ne!(a, train.epoch_starts(4, 1, true));
        assert!(a.iter().all(|&s| s < 26));
        assert_eq!(train.epoch_starts(3, 1, false), [0, 4, 8, 12, 16, 20, 24]);
        let (train, val, _) =
            split(text(&bytes, Tokenizer::Byte), 4, 0.25, Some(2), Some(1)).unwrap();
        assert_eq!((train.per_epoch(), val.len()), (2, 1));
    }

    #[test]
    fn a_split_shorter_than_a_window_is_an_error() {
        let e = split(text("abcdefghij", Tokenizer::Char), 4, 0.3, None, None)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("the held-out tail (val_split) has 3 characters of 10"),
            "{e}"
        );
        assert!(e.contains("block_size + 1 = 5"), "{e}");
        let e = split(text("abcdefghij", Tokenizer::Char), 4, 0.7, None, None)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("the training part"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("empty.txt");
        std::fs::write(&p, "").unwrap();
        let e = read(&p, Tokenizer::Char).err().unwrap().to_string();
        assert!(e.contains("empty.txt: empty"), "{e}");
    }
}
