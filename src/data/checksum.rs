//! SHA256SUMS (the `sha256sum` format) for the shipped datasets: the sums are of the
//! uncompressed files, so recompressing a .gz does not invalidate them.

use std::collections::HashMap;
use std::path::Path;

use super::DataError;

/// The sums listed in `dir/SHA256SUMS`, by file name; empty when the file is absent.
pub(crate) fn read_sums(dir: &Path) -> Result<HashMap<String, String>, DataError> {
    let path = dir.join("SHA256SUMS");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(DataError::io(&path, e)),
    };
    let mut sums = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // "<64 hex>  <name>" or "<64 hex> *<name>" (binary mode).
        let parsed = line
            .split_once(char::is_whitespace)
            .and_then(|(hash, name)| {
                let name = name.trim_start().trim_start_matches('*');
                (hash.len() == 64
                    && hash.bytes().all(|b| b.is_ascii_hexdigit())
                    && !name.is_empty())
                .then(|| (name.to_string(), hash.to_ascii_lowercase()))
            });
        let Some((name, hash)) = parsed else {
            return Err(DataError::format(
                &path,
                format!("line {}: expected \"<sha256 in hex>  <file name>\"", n + 1),
            ));
        };
        sums.insert(name, hash);
    }
    Ok(sums)
}

pub(crate) use crate::checkpoint::sha256_hex;

/// Checks `bytes` (the uncompressed content of `path`) against `expected`, if any.
pub(crate) fn verify(
    path: &Path,
    bytes: &[u8],
    expected: Option<&String>,
) -> Result<(), DataError> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let actual = sha256_hex(bytes);
    if &actual != expected {
        return Err(DataError::Checksum {
            path: path.to_path_buf(),
            expected: expected.clone(),
            actual,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_abc() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn reads_sums_and_rejects_malformed_lines() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_sums(dir.path()).unwrap().is_empty());
        let h = "a".repeat(64);
        std::fs::write(
            dir.path().join("SHA256SUMS"),
            format!("{h}  x-ubyte\n{h} *y\n"),
        )
        .unwrap();
        let sums = read_sums(dir.path()).unwrap();
        assert_eq!(sums.get("x-ubyte"), Some(&h));
        assert_eq!(sums.get("y"), Some(&h));
        std::fs::write(dir.path().join("SHA256SUMS"), "nothex  x\n").unwrap();
        let e = read_sums(dir.path()).unwrap_err().to_string();
        assert!(e.contains("SHA256SUMS: line 1"), "{e}");
    }

    #[test]
    fn mismatch_names_the_file() {
        let e = verify(Path::new("d/f"), b"abc", Some(&"0".repeat(64))).unwrap_err();
        let e = e.to_string();
        assert!(e.starts_with("d/f: checksum mismatch"), "{e}");
        assert!(verify(Path::new("d/f"), b"abc", None).is_ok());
    }
}
