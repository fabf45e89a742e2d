//! 2-D convolution, NCHW input, OIHW weight (PyTorch's layouts).

use serde::Serialize;

use super::{Primitive, ShapeResult, TensorType, expect_arity, expect_f32, fmt_shape};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Conv2d {
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
    pub groups: usize,
}

/// Output size of a sliding window along one dim (PyTorch's formula), or None if the window
/// does not fit.
pub fn window_out(
    input: usize,
    kernel: usize,
    stride: usize,
    pad: usize,
    dilation: usize,
) -> Option<usize> {
    let span = dilation * (kernel - 1) + 1;
    let padded = input + 2 * pad;
    (padded >= span).then(|| (padded - span) / stride + 1)
}

impl Primitive for Conv2d {
    fn name(&self) -> &'static str {
        "conv2d"
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        expect_arity(inputs, 2)?;
        let (x, w) = (inputs[0], inputs[1]);
        expect_f32(x, "the input")?;
        if x.rank() != 4 {
            return Err(format!(
                "expects an image batch [N, C, H, W], got {}: put a reshape before it",
                fmt_shape(&x.shape)
            ));
        }
        let [n, c, h, wd] = [x.shape[0], x.shape[1], x.shape[2], x.shape[3]];
        let [o, ci, kh, kw] = [w.shape[0], w.shape[1], w.shape[2], w.shape[3]];
        if c % self.groups != 0 || o % self.groups != 0 {
            return Err(format!(
                "groups = {} must divide both the input channels ({c}) and the output channels ({o})",
                self.groups
            ));
        }
        if ci * self.groups != c {
            return Err(format!(
                "input has {c} channels, the weight expects {}",
                ci * self.groups
            ));
        }
        let oh = window_out(h, kh, self.stride[0], self.padding[0], self.dilation[0]);
        let ow = window_out(wd, kw, self.stride[1], self.padding[1], self.dilation[1]);
        match (oh, ow) {
            (Some(oh), Some(ow)) => Ok(vec![TensorType::f32(vec![n, o, oh, ow])]),
            _ => Err(format!(
                "a {kh}x{kw} kernel (dilation {:?}, padding {:?}) does not fit a {h}x{wd} input",
                self.dilation, self.padding
            )),
        }
    }
    fn flops(&self, inputs: &[&TensorType], out: &[TensorType]) -> u64 {
        let w = &inputs[1].shape;
        let macs_per_out = (w[1] * w[2] * w[3]) as u64;
        (2 * macs_per_out).saturating_mul(out[0].numel() as u64)
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        vec![
            ("stride", format!("{:?}", self.stride)),
            ("padding", format!("{:?}", self.padding)),
            ("dilation", format!("{:?}", self.dilation)),
            ("groups", self.groups.to_string()),
        ]
    }
}
