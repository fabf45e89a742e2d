//! Inputs named on the command line for `trainer predict`: IDX image files (every image in
//! them) or PNG/JPEG files, prepared exactly like evaluation samples.

use std::path::PathBuf;

use super::augment::Pipeline;
use super::split::Source;
use super::{DataError, folder, idx};
use crate::config::sections::Data;

/// Reads `paths` as samples of `input_shape`, normalised like eval data. Returns one
/// (display name, features) per sample: "file.png", or "images-idx3-ubyte[3]" for IDX images.
pub fn read_inputs(
    paths: &[PathBuf],
    cfg: &Data,
    input_shape: &[usize],
) -> Result<Vec<(String, Vec<f32>)>, DataError> {
    let pipe = Pipeline::new(cfg, input_shape, false)?;
    let mut out = Vec::new();
    for p in paths {
        let bytes = idx::read_maybe_gz(p).map_err(|e| match e {
            // The dataset's hint (set data.path) is wrong here: the user named this file.
            DataError::Missing { path, .. } => DataError::Missing {
                path,
                hint: "there is no such input file (predict reads the IDX, PNG or JPEG files \
                       named on its command line)"
                    .into(),
            },
            e => e,
        })?;
        let samples: Vec<(String, Vec<u8>)> = if idx::looks_like_images(&bytes) {
            let (dims, data) = idx::parse(p, bytes, idx::IMAGES_MAGIC, "IDX images")?;
            let shape = vec![1, dims[1], dims[2]];
            if shape != input_shape {
                return Err(DataError::Shape {
                    model: input_shape.to_vec(),
                    data: shape,
                    source_name: p.display().to_string(),
                });
            }
            let per = dims[1] * dims[2];
            (0..dims[0])
                .map(|i| {
                    let px = data[i * per..(i + 1) * per].to_vec();
                    (format!("{}[{i}]", p.display()), px)
                })
                .collect()
        } else {
            let (c, h, w) = folder::image_shape(input_shape)?;
            vec![(
                p.display().to_string(),
                folder::decode_bytes(p, &bytes, c, h, w)?,
            )]
        };
        for (name, px) in samples {
            let mut x = vec![0.0; px.len()];
            pipe.write(Source::U8(&px), &mut x, None);
            out.push((name, x));
        }
    }
    Ok(out)
}
