//! The model layer: the layer ops a config can name, and the builder that turns the model's
//! declarations into the forward graph (`build`). Each layer op is a `deny_unknown_fields`
//! attribute struct (its keys are the config keys) that lowers itself to primitive ops through
//! [`Lower`]. Composites need no gradient of their own: they get one from their parts.
//! [`layer_ops!`] is the only list of them, with the activations of the elementwise table
//! (`UnaryFn`), which are layer ops by being rows there.

mod activation;
mod attention;
mod builder;
mod conv;
mod decode;
mod linear;
mod lower;
mod norm;
mod pool;
mod sequence;
mod shape;

pub use builder::{build, build_for, build_with_batch};
pub use decode::{Decoding, build_decode};
pub use lower::{Arity, LayerSpec, Lower};

use crate::config::de::{field_names, from_value_in};
use crate::config::model::{Named, quoted};
use crate::config::tree::Value;
use crate::diag::Diagnostic;
use crate::ops::UnaryFn;
use crate::tensor::TensorId;

/// Defines `LayerOp` and `LAYER_OPS` from rows `"name" => Variant(AttributeStruct)`. The
/// activations are the elementwise table's layer ops (`UnaryFn::LAYER_OPS`): a plain one needs
/// no row here (`activation::Plain`); the `activations` group lists only those whose attributes
/// choose the function, and its place among the rows is where `LAYER_OPS` lists them all.
macro_rules! layer_ops {
    (
        $($before:literal => $before_variant:ident($before_spec:ty),)*
        activations { $($act:literal => $act_variant:ident($act_spec:ty)),* $(,)? }
        $($after:literal => $after_variant:ident($after_spec:ty)),* $(,)?
    ) => {
        layer_ops!(@define
            rows {
                $($before => $before_variant($before_spec),)*
                $($act => $act_variant($act_spec),)*
                $($after => $after_variant($after_spec),)*
            }
            before { $($before),* }
            attributed { $($act),* }
            after { $($after),* }
        );
    };
    (@define
        rows { $($name:literal => $variant:ident($spec:ty),)* }
        before { $($before:literal),* }
        attributed { $($act:literal),* }
        after { $($after:literal),* }
    ) => {
        #[derive(Clone, Debug)]
        pub enum LayerOp {
            $($variant($spec),)*
            /// A plain activation of the elementwise table (relu, sigmoid, tanh, silu, ...).
            Activation(activation::Plain),
        }

        /// Every op name a layer may use, in the reference's order.
        pub const LAYER_OPS: &[&str] = &LAYER_OP_NAMES;

        const BEFORE_ACTIVATIONS: &[&str] = &[$($before),*];
        const AFTER_ACTIVATIONS: &[&str] = &[$($after),*];
        const LAYER_OP_NAMES: [&str;
            BEFORE_ACTIVATIONS.len() + UnaryFn::LAYER_OPS.len() + AFTER_ACTIVATIONS.len()] =
            chain([BEFORE_ACTIVATIONS, UnaryFn::LAYER_OPS, AFTER_ACTIVATIONS]);

        // The `activations` rows are exactly the table's layer ops that are not plain.
        const _: () = {
            let attributed: &[&str] = &[$($act),*];
            let mut i = 0;
            while i < attributed.len() {
                assert!(
                    UnaryFn::has_attributed_layer(attributed[i]),
                    "an `activations` row that no row of the elementwise table reaches"
                );
                i += 1;
            }
            let (mut k, mut table) = (0, 0);
            while k < UnaryFn::LAYER_OPS.len() {
                if UnaryFn::has_attributed_layer(UnaryFn::LAYER_OPS[k]) {
                    table += 1;
                }
                k += 1;
            }
            assert!(
                table == attributed.len(),
                "a layer op of the elementwise table with attributes lacks its `activations` row"
            );
        };

        impl LayerOp {
            /// Reads the attributes of op `name`; None if no such op.
            pub fn parse(name: &str, attrs: &Value) -> Option<Result<LayerOp, Diagnostic>> {
                match name {
                    $($name => Some(
                        from_value_in::<$spec>(attrs, concat!("a `", $name, "` layer"))
                            .map(LayerOp::$variant),
                    ),)*
                    _ => activation::Plain::parse(name, attrs)
                        .map(|r| r.map(LayerOp::Activation)),
                }
            }
            pub fn name(&self) -> &'static str {
                match self {
                    $(LayerOp::$variant(_) => $name,)*
                    LayerOp::Activation(a) => a.0.layer(),
                }
            }
            pub fn arity(&self) -> Arity {
                match self {
                    $(LayerOp::$variant(_) => <$spec as LayerSpec>::ARITY,)*
                    LayerOp::Activation(_) => Arity::One,
                }
            }
            pub fn lower(&self, cx: &mut Lower, inputs: &[TensorId]) -> Result<TensorId, String> {
                match self {
                    $(LayerOp::$variant(s) => s.lower(cx, inputs),)*
                    LayerOp::Activation(a) => a.lower(cx, inputs),
                }
            }
            /// The attribute keys of op `name` (for the reference-documentation check).
            pub fn attribute_keys(name: &str) -> Option<&'static [&'static str]> {
                match name {
                    $($name => Some(field_names::<$spec>()),)*
                    _ => UnaryFn::plain_layer(name)
                        .map(|_| field_names::<activation::NoAttributes>()),
                }
            }
        }
    };
}

/// The concatenation of three name lists, at compile time.
const fn chain<const N: usize>(parts: [&[&'static str]; 3]) -> [&'static str; N] {
    let mut out = [""; N];
    let (mut p, mut n) = (0, 0);
    while p < parts.len() {
        let mut i = 0;
        while i < parts[p].len() {
            out[n] = parts[p][i];
            n += 1;
            i += 1;
        }
        p += 1;
    }
    out
}

layer_ops! {
    "conv2d" => Conv2d(conv::Conv2dSpec),
    "linear" => Linear(linear::LinearSpec),
    "embedding" => Embedding(linear::EmbeddingSpec),
    "batchnorm" => BatchNorm(norm::BatchNormSpec),
    "layernorm" => LayerNorm(norm::LayerNormSpec),
    "rmsnorm" => RmsNorm(norm::RmsNormSpec),
    activations {
        "leaky_relu" => LeakyRelu(activation::LeakyRelu),
        "gelu" => Gelu(activation::Gelu),
        "scale" => Scale(activation::Scale),
    }
    "softmax" => Softmax(activation::SoftmaxSpec),
    "dropout" => Dropout(activation::DropoutSpec),
    "max_pool2d" => MaxPool2d(pool::MaxPool2d),
    "avg_pool2d" => AvgPool2d(pool::AvgPool2d),
    "global_avg_pool" => GlobalAvgPool(pool::GlobalAvgPool),
    "flatten" => Flatten(shape::Flatten),
    "reshape" => Reshape(shape::ReshapeSpec),
    "permute" => Permute(shape::PermuteSpec),
    "transpose" => Transpose(shape::TransposeSpec),
    "add" => Add(shape::Add),
    "mul" => Mul(shape::Mul),
    "matmul" => MatMul(shape::MatMulSpec),
    "concat" => Concat(shape::ConcatSpec),
    "slice" => Slice(shape::SliceSpec),
    "positional" => Positional(sequence::PositionalSpec),
    "class_token" => ClassToken(sequence::ClassTokenSpec),
    "attention" => Attention(attention::AttentionSpec),
}

/// The op a layer table names, with its attributes read; an unknown name is an error at the
/// `op` value, with did-you-mean and the list of ops.
pub fn parse_op(name: &Named, attrs: &Value) -> Result<LayerOp, Diagnostic> {
    match LayerOp::parse(&name.name, attrs) {
        Some(r) => r,
        None => {
            let hint = if matches!(name.name.as_str(), "cross_entropy" | "mse") {
                format!(
                    "`{0}` is a loss, not a layer: remove this layer and set it in the [loss] section: kind = \"{0}\"",
                    name.name
                )
            } else {
                format!("known ops: {}", quoted(LAYER_OPS))
            };
            Err(Diagnostic::new(format!("unknown op \"{}\"", name.name))
                .at(name.loc, "not an op")
                .help_did_you_mean(&name.name, LAYER_OPS.iter().copied())
                .note(hint))
        }
    }
}

/// The residual sum of a block's shortcut.
pub fn shape_add() -> shape::Add {
    shape::Add {}
}

/// A 1x1 convolution without bias, as a projection shortcut uses.
pub fn conv_spec(out: usize, stride: [usize; 2]) -> LayerOp {
    use crate::config::values::{Count, Pair, Positive};
    LayerOp::Conv2d(conv::Conv2dSpec {
        out: Positive(out),
        kernel: Pair(Positive(1), Positive(1)),
        stride: Pair(Positive(stride[0]), Positive(stride[1])),
        padding: Pair(Count(0), Count(0)),
        dilation: Pair(Positive(1), Positive(1)),
        groups: Positive(1),
        bias: false,
    })
}

/// A batchnorm with PyTorch's defaults.
pub fn batchnorm_spec() -> LayerOp {
    use crate::config::values::{Fraction, PositiveFloat};
    LayerOp::BatchNorm(norm::BatchNormSpec {
        eps: PositiveFloat(1e-5),
        momentum: Fraction(0.1),
        affine: true,
    })
}
