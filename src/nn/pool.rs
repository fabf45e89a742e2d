use serde::Deserialize;

use super::lower::LayerSpec;
use crate::config::values::{Count, Pair, Positive};
use crate::nn::Lower;
use crate::ops::{MeanAxes, OpKind, Pool2d, PoolKind};
use crate::tensor::TensorId;
use crate::tensor::fmt_shape;

fn zero() -> Pair<Count> {
    Pair(Count(0), Count(0))
}

macro_rules! pool {
    ($(#[$doc:meta])* $name:ident, $kind:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            pub kernel: Pair<Positive>,
            /// Default: the kernel size.
            pub stride: Option<Pair<Positive>>,
            #[serde(default = "zero")]
            pub padding: Pair<Count>,
        }
        impl LayerSpec for $name {
            fn lower(&self, cx: &mut Lower, inputs: &[TensorId]) -> Result<TensorId, String> {
                pool2d(cx, inputs[0], $kind, self.kernel, self.stride, self.padding)
            }
        }
    };
}

pool!(
    /// Maximum over each window of H×W.
    MaxPool2d, PoolKind::Max
);
pool!(
    /// Mean over each window of H×W (zero padding counts in the divisor).
    AvgPool2d, PoolKind::Avg
);

fn pool2d(
    cx: &mut Lower,
    x: TensorId,
    kind: PoolKind,
    kernel: Pair<Positive>,
    stride: Option<Pair<Positive>>,
    padding: Pair<Count>,
) -> Result<TensorId, String> {
    let s = cx.sample(x);
    if s.len() != 3 {
        return Err(format!(
            "pooling expects [channels, height, width], got {}",
            fmt_shape(s)
        ));
    }
    let kernel = [kernel.0.0, kernel.1.0];
    let stride = stride.map(|p| [p.0.0, p.1.0]).unwrap_or(kernel);
    let op = Pool2d {
        kind,
        kernel,
        stride,
        padding: [padding.0.0, padding.1.0],
    };
    cx.op(OpKind::Pool2d(op), &[x])
}

/// Mean over height and width: [C, H, W] → [C].
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalAvgPool {}

impl LayerSpec for GlobalAvgPool {
    fn lower(&self, cx: &mut Lower, inputs: &[TensorId]) -> Result<TensorId, String> {
        let s = cx.sample(inputs[0]);
        if s.len() != 3 {
            return Err(format!(
                "global_avg_pool expects [channels, height, width], got {}",
                fmt_shape(s)
            ));
        }
        cx.op(
            OpKind::MeanAxes(MeanAxes { axes: vec![2, 3] }),
            &inputs[..1],
        )
    }
}
