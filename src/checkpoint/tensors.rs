//! Tensor files: a list of `NamedTensor`s to and from safetensors bytes.
//!
//! The layout is PyTorch's: names are state_dict keys, data is row-major little-endian, F32,
//! and I64 for tensors marked `integer` (`num_batches_tracked` is an int64 scalar in PyTorch,
//! and `load_state_dict` copies into the existing buffer, so its dtype must match). The header
//! metadata holds `"format": "pt"` (what `safetensors.torch.save_file` writes) and nothing else:
//! safetensors keeps metadata in a `HashMap`, whose order differs from process to process, and
//! a second key would make two identical checkpoints differ in their header bytes (a resumed
//! run must end byte for byte where an uninterrupted one does). Tensors come back in file
//! order (safetensors sorts them by dtype, then name); callers match them by name.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::path::Path;

use safetensors::{Dtype, SafeTensors, View};

use super::{CheckpointError, NamedTensor};

/// One tensor's bytes, ready for `safetensors::serialize`.
struct Raw {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for &Raw {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Serializes `tensors` as a safetensors file. `file` names the file in error messages.
/// Refuses, before anything is written, an empty or repeated name, a shape that does not match
/// the data length, and an integer tensor holding a value that is not an integer.
pub(crate) fn encode(
    file: &'static str,
    tensors: &[NamedTensor],
) -> Result<Vec<u8>, CheckpointError> {
    let invalid = |t: &NamedTensor, reason: String| CheckpointError::InvalidTensor {
        file,
        tensor: t.name.clone(),
        reason,
    };
    let mut seen = HashSet::new();
    let mut raws = Vec::with_capacity(tensors.len());
    for t in tensors {
        if t.name.is_empty() {
            return Err(invalid(t, "the name is empty".into()));
        }
        if !seen.insert(t.name.as_str()) {
            return Err(invalid(t, "the name appears twice".into()));
        }
        let numel = t.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        if numel != Some(t.data.len()) {
            return Err(invalid(
                t,
                format!("shape {:?} does not match {} values", t.shape, t.data.len()),
            ));
        }
        let (dtype, bytes) = if t.integer {
            let mut bytes = Vec::with_capacity(t.data.len() * 8);
            for &v in &t.data {
                // f32 → i64 is exact for integral values inside i64's range.
                if v.fract() != 0.0 || !v.is_finite() || v.abs() >= 9.2e18 {
                    return Err(invalid(t, format!("marked integer but holds {v}")));
                }
                bytes.extend_from_slice(&(v as i64).to_le_bytes());
            }
            (Dtype::I64, bytes)
        } else {
            let bytes = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
            (Dtype::F32, bytes)
        };
        raws.push((
            t.name.as_str(),
            Raw {
                dtype,
                shape: t.shape.clone(),
                bytes,
            },
        ));
    }
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(raws.iter().map(|(n, r)| (*n, r)), Some(metadata)).map_err(|source| {
        CheckpointError::Safetensors {
            path: file.into(),
            source,
        }
    })
}

/// Parses a safetensors file's bytes (read from `path`) into tensors, in file order.
pub(crate) fn decode(path: &Path, bytes: &[u8]) -> Result<Vec<NamedTensor>, CheckpointError> {
    check_dtypes(path, bytes)?;
    let st_err = |source| CheckpointError::Safetensors {
        path: path.to_path_buf(),
        source,
    };
    let (_, metadata) = SafeTensors::read_metadata(bytes).map_err(st_err)?;
    let st = SafeTensors::deserialize(bytes).map_err(st_err)?;
    metadata
        .offset_keys()
        .into_iter()
        .map(|name| {
            let view = st.tensor(&name).map_err(st_err)?;
            let (data, integer) = match view.dtype() {
                Dtype::F32 => (
                    view.data()
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                    false,
                ),
                // Exact up to 2^24, the most an f32 can count without rounding.
                Dtype::I64 => (
                    view.data()
                        .chunks_exact(8)
                        .map(|c| {
                            i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])
                                as f32
                        })
                        .collect(),
                    true,
                ),
                other => {
                    return Err(CheckpointError::Dtype {
                        path: path.to_path_buf(),
                        tensor: name,
                        dtype: format!("{other:?}"),
                    });
                }
            };
            Ok(NamedTensor {
                shape: view.shape().to_vec(),
                name,
                data,
                integer,
            })
        })
        .collect()
}

/// Reports the first tensor whose dtype is not F32 or I64 by the name its header gives, before
/// safetensors parses the header: it rejects dtypes it does not know with a bare serde message.
/// A header that does not parse here is left for safetensors to describe.
fn check_dtypes(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let Some(header) = header_json(bytes) else {
        return Ok(());
    };
    let Some(entries) = header.as_object() else {
        return Ok(());
    };
    for (name, entry) in entries {
        if name == "__metadata__" {
            continue;
        }
        if let Some(dtype) = entry.get("dtype").and_then(|d| d.as_str())
            && dtype != "F32"
            && dtype != "I64"
        {
            return Err(CheckpointError::Dtype {
                path: path.to_path_buf(),
                tensor: name.clone(),
                dtype: dtype.to_string(),
            });
        }
    }
    Ok(())
}

/// The JSON header of a safetensors file (8-byte little-endian length, then the JSON), if the
/// bytes hold one.
pub(crate) fn header_json(bytes: &[u8]) -> Option<serde_json::Value> {
    let len: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    let len = usize::try_from(u64::from_le_bytes(len)).ok()?;
    let header = bytes.get(8..8usize.checked_add(len)?)?;
    serde_json::from_slice(header).ok()
}
