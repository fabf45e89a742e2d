//! The table of unary elementwise functions. A function is one row of [`unary_fns!`]: its
//! name, the config layer op that reaches it, its cost, its value and derivative on the CPU
//! (generic over `Real`, so f64 gradient checks run the same code), the same two as WGSL
//! snippets, and, where the derivative can be computed from the output, that form too.
//! Everything else (the `Unary`/`UnaryGrad` primitives, their kernels, the config layer ops,
//! the gradient and GPU checks, the reference check) reads the table, so adding a row is all
//! it takes to add an activation.
//!
//! A WGSL snippet is one self-contained expression of `a` (the input x, or the output y for a
//! derivative from the output) and `p.alpha` (the row's parameter, if it has one); it may call
//! the helpers of kernels/elementwise.wgsl. The elementwise kernel and, later, fused kernels
//! splice it in as it is. The CPU formula and its snippet evaluate in the same order.

use serde::Serialize;

use crate::kernel::cpu::Real;

/// Expands the table into `UnaryFn` and its methods: each method is one `match` over the rows.
///
/// A row: `Variant { param = [examples] } = "name" { fields }`, the braces after the variant
/// only for a function with a parameter (an `f64`, passed to WGSL as `p.alpha`; the examples
/// are the values tests run it at). Fields, in order:
/// - `layer`: `plain` for a layer op of the function's name with no attributes (the table
///   alone makes it a layer op), or the name of the layer op in nn/ whose attributes choose
///   this function (leaky_relu's slope, gelu's approximate);
/// - `cost`: FLOPs per element, as docs/config.md gives them;
/// - `value(x)`, `derivative(x)`: f(x) and f'(x) as Rust expressions, `T: Real`;
/// - `wgsl`, `wgsl_derivative`: the same two as WGSL snippets of `a` = x;
/// - optionally `grad_from_output: when (condition) { derivative_from_output(y): ..., wgsl:
///   ... }`: f'(x) from y = f(x) alone, bit for bit the value `derivative` gives, where the
///   condition holds (PyTorch does this for relu, sigmoid, tanh). Without it the gradient
///   reads the input.
macro_rules! unary_fns {
    ($(
        $(#[$doc:meta])*
        $variant:ident $({ $param:ident = [$($example:expr),+ $(,)?] })? = $name:literal {
            layer: $layer:tt,
            cost: $cost:expr,
            value($x:ident): $value:expr,
            derivative($dx:ident): $derivative:expr,
            wgsl: $wgsl:literal,
            wgsl_derivative: $wgsl_derivative:literal,
            $(grad_from_output: when ($when:expr) {
                derivative_from_output($y:ident): $from_output:expr,
                wgsl: $wgsl_from_output:literal $(,)?
            } $(,)?)?
        }
    ),* $(,)?) => {
        /// A unary elementwise function: one row of the table in ops/elementwise/unary_fn.rs.
        #[derive(Clone, Copy, Debug, PartialEq, Serialize)]
        #[serde(tag = "fn")]
        pub enum UnaryFn {
            $($(#[$doc])* #[serde(rename = $name)] $variant $({ $param: f64 })?,)*
        }

        /// Each row's layer op, and whether it is plain (named after the function, no
        /// attributes).
        const ROW_LAYERS: &[(&str, bool)] = &[$((layer_name!($layer, $name), is_plain!($layer))),*];

        impl UnaryFn {
            pub fn name(self) -> &'static str {
                match self {
                    $(UnaryFn::$variant { .. } => $name,)*
                }
            }
            /// The config layer op that reaches this function.
            pub fn layer(self) -> &'static str {
                match self {
                    $(UnaryFn::$variant { .. } => layer_name!($layer, $name),)*
                }
            }
            /// The function of a plain layer op (no attributes), by the op's name.
            pub fn plain_layer(name: &str) -> Option<UnaryFn> {
                match name {
                    $($name => plain_fn!($layer, $variant $($param)?),)*
                    _ => None,
                }
            }
            /// Every row, once per example value of its parameter: what tests iterate, so a
            /// new row is checked without being listed anywhere else.
            pub fn examples() -> Vec<UnaryFn> {
                let mut all = Vec::new();
                $(all.extend(examples_of!($variant $($param [$($example),+])?));)*
                all
            }
            /// FLOPs per element: a rough, documented count (docs/config.md, "FLOPs").
            pub fn cost(self) -> u64 {
                match self {
                    $(UnaryFn::$variant { .. } => $cost,)*
                }
            }
            /// f(x).
            pub fn apply<T: Real>(self, x: T) -> T {
                match self {
                    $(UnaryFn::$variant $({ $param })? => {
                        let $x = x;
                        $value
                    })*
                }
            }
            /// f'(x), the exact derivative of `apply` (tanh-gelu's of its own formula, not
            /// exact gelu's).
            pub fn derivative<T: Real>(self, x: T) -> T {
                match self {
                    $(UnaryFn::$variant $({ $param })? => {
                        let $dx = x;
                        $derivative
                    })*
                }
            }
            /// Whether f'(x) can be computed from y = f(x) alone, bit for bit. The backward
            /// pass then keeps y instead of x, so the op can run in place over x (a
            /// conv-bn-relu saves two activations, not three).
            #[allow(unused_variables)] // a row's condition need not read its parameter
            pub fn grad_from_output(self) -> bool {
                match self {
                    $(UnaryFn::$variant $({ $param })? => or_false!($($when)?),)*
                }
            }
            /// f'(x) given y = f(x); only for functions where `grad_from_output` holds.
            pub fn derivative_from_output<T: Real>(self, y: T) -> T {
                match self {
                    $(UnaryFn::$variant $({ $param })? => {
                        or_unreachable!($name; $({
                            let $y = y;
                            $from_output
                        })?)
                    })*
                }
            }
            /// f(a) as a WGSL expression.
            pub fn wgsl(self) -> &'static str {
                match self {
                    $(UnaryFn::$variant { .. } => $wgsl,)*
                }
            }
            /// f'(a) as a WGSL expression; with `from_output`, a is y = f(x).
            pub fn wgsl_derivative(self, from_output: bool) -> &'static str {
                match (self, from_output) {
                    $(
                        (UnaryFn::$variant { .. }, false) => $wgsl_derivative,
                        (UnaryFn::$variant { .. }, true) => {
                            or_unreachable!($name; $($wgsl_from_output)?)
                        }
                    )*
                }
            }
            /// The parameter, as the kernels' `p.alpha` (0 without one).
            pub fn alpha(self) -> f64 {
                match self {
                    $(UnaryFn::$variant $({ $param })? => or_zero!($($param)?),)*
                }
            }
            /// The parameter as an attribute of the op (plan and graph output).
            pub fn attrs(self) -> Vec<(&'static str, String)> {
                match self {
                    $(UnaryFn::$variant $({ $param })? => {
                        vec![$((stringify!($param), $param.to_string()))?]
                    })*
                }
            }
        }
    };
}

macro_rules! layer_name {
    (plain, $name:literal) => {
        $name
    };
    ($layer:literal, $name:literal) => {
        $layer
    };
}

macro_rules! is_plain {
    (plain) => {
        true
    };
    ($layer:literal) => {
        false
    };
}

/// A plain row has no parameter: a layer without attributes could not set it.
macro_rules! plain_fn {
    (plain, $variant:ident) => {
        Some(UnaryFn::$variant)
    };
    ($layer:literal, $variant:ident $($param:ident)?) => {
        None
    };
}

macro_rules! or_false {
    () => {
        false
    };
    ($when:expr) => {
        $when
    };
}

macro_rules! or_zero {
    () => {
        0.0
    };
    ($param:ident) => {
        $param
    };
}

/// A row without a derivative from the output is never asked for one: its vjp reads x.
macro_rules! or_unreachable {
    ($name:literal;) => {
        unreachable!("{} needs its input for its gradient", $name)
    };
    ($name:literal; $from_output:expr) => {
        $from_output
    };
}

macro_rules! examples_of {
    ($variant:ident) => {
        [UnaryFn::$variant]
    };
    ($variant:ident $param:ident [$($example:expr),+]) => {
        [$(UnaryFn::$variant { $param: $example }),+]
    };
}

unary_fns! {
    /// max(x, 0).
    Relu = "relu" {
        layer: plain,
        cost: 1,
        value(x): x.max(T::ZERO),
        derivative(x): if x > T::ZERO { T::ONE } else { T::ZERO },
        wgsl: "max(a, 0.0)",
        wgsl_derivative: "select(0.0, 1.0, a > 0.0)",
        grad_from_output: when (true) {
            derivative_from_output(y): if y > T::ZERO { T::ONE } else { T::ZERO },
            wgsl: "select(0.0, 1.0, a > 0.0)",
        },
    },
    /// max(0, x) + slope·min(0, x).
    LeakyRelu { slope = [0.01, 0.1, -0.5] } = "leaky_relu" {
        layer: "leaky_relu",
        cost: 2,
        value(x): if x > T::ZERO { x } else { T::of(slope) * x },
        derivative(x): if x > T::ZERO { T::ONE } else { T::of(slope) },
        wgsl: "select(p.alpha * a, a, a > 0.0)",
        wgsl_derivative: "select(p.alpha, 1.0, a > 0.0)",
        // y > 0 exactly when x > 0 only for a positive slope.
        grad_from_output: when (slope > 0.0) {
            derivative_from_output(y): if y > T::ZERO { T::ONE } else { T::of(slope) },
            wgsl: "select(p.alpha, 1.0, a > 0.0)",
        },
    },
    /// Exact gelu, x·Φ(x) (erf); the tanh approximation is a row of its own so that its
    /// gradient is the approximation's.
    Gelu = "gelu" {
        layer: "gelu",
        cost: 8,
        value(x): {
            let half = T::of(0.5);
            half * x * (T::ONE + (x * T::of(std::f64::consts::FRAC_1_SQRT_2)).erf())
        },
        derivative(x): {
            let half = T::of(0.5);
            let cdf = half * (T::ONE + (x * T::of(std::f64::consts::FRAC_1_SQRT_2)).erf());
            let pdf = (-half * x * x).exp() * T::of(0.398_942_280_401_432_7);
            cdf + x * pdf
        },
        wgsl: "gelu(a)",
        wgsl_derivative: "gelu_grad(a)",
    },
    /// gelu's tanh approximation, 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
    GeluTanh = "gelu_tanh" {
        layer: "gelu",
        cost: 8,
        value(x): T::of(0.5) * x * (T::ONE + gelu_tanh_inner(x).tanh()),
        derivative(x): {
            let half = T::of(0.5);
            let t = gelu_tanh_inner(x).tanh();
            let du = T::of(0.797_884_560_802_865_4) * (T::ONE + T::of(3.0 * 0.044715) * x * x);
            half * (T::ONE + t) + half * x * (T::ONE - t * t) * du
        },
        wgsl: "gelu_tanh(a)",
        wgsl_derivative: "gelu_tanh_grad(a)",
    },
    /// 1 / (1 + e^(−x)).
    Sigmoid = "sigmoid" {
        layer: plain,
        cost: 4,
        value(x): sigmoid(x),
        derivative(x): {
            let s = sigmoid(x);
            s * (T::ONE - s)
        },
        wgsl: "sigmoid(a)",
        wgsl_derivative: "sigmoid(a) * (1.0 - sigmoid(a))",
        grad_from_output: when (true) {
            derivative_from_output(y): y * (T::ONE - y),
            wgsl: "a * (1.0 - a)",
        },
    },
    /// Hyperbolic tangent.
    Tanh = "tanh" {
        layer: plain,
        cost: 4,
        value(x): x.tanh(),
        derivative(x): {
            let t = x.tanh();
            T::ONE - t * t
        },
        wgsl: "tanh_safe(a)",
        wgsl_derivative: "1.0 - tanh_safe(a) * tanh_safe(a)",
        grad_from_output: when (true) {
            derivative_from_output(y): T::ONE - y * y,
            wgsl: "1.0 - a * a",
        },
    },
    /// factor·x (the attention scores' 1/√d in an unfused attention).
    Scale { factor = [0.5, -2.0] } = "scale" {
        layer: "scale",
        cost: 1,
        value(x): T::of(factor) * x,
        derivative(_x): T::of(factor),
        wgsl: "p.alpha * a",
        wgsl_derivative: "p.alpha",
        grad_from_output: when (factor != 0.0) {
            derivative_from_output(_y): T::of(factor),
            wgsl: "p.alpha",
        },
    },
    /// x·σ(x), as torch.nn.SiLU (swish); f'(x) = σ(x)·(1 + x·(1 − σ(x))). Its gradient needs
    /// x: y does not determine it (silu is not monotonic).
    Silu = "silu" {
        layer: plain,
        cost: 5,
        value(x): x * sigmoid(x),
        derivative(x): {
            let s = sigmoid(x);
            s * (T::ONE + x * (T::ONE - s))
        },
        wgsl: "a * sigmoid(a)",
        wgsl_derivative: "silu_grad(a)",
    },
}

fn sigmoid<T: Real>(x: T) -> T {
    T::ONE / (T::ONE + (-x).exp())
}

/// sqrt(2/pi) * (x + 0.044715 x^3), the argument of tanh in gelu's approximation.
fn gelu_tanh_inner<T: Real>(x: T) -> T {
    T::of(0.797_884_560_802_865_4) * (x + T::of(0.044715) * x * x * x)
}

/// The layer ops that reach the table, each once, in table order: the activations as
/// `nn::LAYER_OPS` and the reference list them.
const LAYER_OPS: [&str; distinct_layers()] = {
    let mut out = [""; distinct_layers()];
    let (mut i, mut n) = (0, 0);
    while i < ROW_LAYERS.len() {
        if first_of_its_layer(i) {
            out[n] = ROW_LAYERS[i].0;
            n += 1;
        }
        i += 1;
    }
    out
};

impl UnaryFn {
    /// The layer ops that reach the table, each once, in table order.
    pub const LAYER_OPS: &'static [&'static str] = &LAYER_OPS;

    /// Whether layer op `name` reaches the table through attributes of its own (not plain).
    pub const fn has_attributed_layer(name: &str) -> bool {
        let mut i = 0;
        while i < ROW_LAYERS.len() {
            if !ROW_LAYERS[i].1 && same(ROW_LAYERS[i].0, name) {
                return true;
            }
            i += 1;
        }
        false
    }
}

const fn distinct_layers() -> usize {
    let (mut i, mut n) = (0, 0);
    while i < ROW_LAYERS.len() {
        if first_of_its_layer(i) {
            n += 1;
        }
        i += 1;
    }
    n
}

/// Whether row `i` is the first with its layer op (gelu and gelu_tanh share "gelu").
const fn first_of_its_layer(i: usize) -> bool {
    let mut j = 0;
    while j < i {
        if same(ROW_LAYERS[j].0, ROW_LAYERS[i].0) {
            return false;
        }
        j += 1;
    }
    true
}

const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::UnaryFn;

    #[test]
    fn gradient_from_the_output_equals_gradient_from_the_input_bit_for_bit() {
        for f in UnaryFn::examples() {
            if !f.grad_from_output() {
                continue;
            }
            for i in -400..400 {
                let x = i as f32 * 0.0173 + 0.0005;
                let (a, b) = (f.derivative(x), f.derivative_from_output(f.apply(x)));
                assert_eq!(a.to_bits(), b.to_bits(), "{} at {x}", f.name());
            }
        }
        for f in [
            UnaryFn::Relu,
            UnaryFn::LeakyRelu { slope: 0.01 },
            UnaryFn::Sigmoid,
            UnaryFn::Tanh,
        ] {
            assert!(f.grad_from_output(), "{}", f.name());
        }
        assert!(!UnaryFn::LeakyRelu { slope: -0.5 }.grad_from_output());
        assert!(!UnaryFn::Gelu.grad_from_output());
        assert!(!UnaryFn::Silu.grad_from_output());
    }

    /// PyTorch's torch.nn.SiLU, x·σ(x), and its derivative σ(x)·(1 + x·(1 − σ(x))), at points
    /// worked out independently (Python's math.exp).
    #[test]
    fn silu_is_x_times_its_sigmoid() {
        let points: [(f64, f64, f64); 5] = [
            (1.0, 0.7310585786300049, 0.9276705118714869),
            (-2.0, -0.2384058440442351, -0.09078424878489547),
            (0.5, 0.3112296656009273, 0.7399611873026519),
            (3.0, 2.8577223804673, 1.0881041060151693),
            (0.0, 0.0, 0.5),
        ];
        let f = UnaryFn::plain_layer("silu").expect("silu is a layer op");
        for (x, y, dy) in points {
            assert!(
                (f.apply(x) - y).abs() <= 1e-15,
                "silu({x}) = {}",
                f.apply(x)
            );
            let d = f.derivative(x);
            assert!((d - dy).abs() <= 1e-15, "silu'({x}) = {d}");
            assert!((f.apply(x as f32) - y as f32).abs() <= 1e-6 * (1.0 + y.abs() as f32));
        }
        // Large |x| saturates instead of overflowing to NaN.
        assert_eq!(f.apply(-200.0f32), 0.0);
        assert_eq!(f.apply(200.0f32), 200.0);
        assert_eq!(f.derivative(-200.0f32), 0.0);
        assert_eq!(f.derivative(200.0f32), 1.0);
    }

    #[test]
    fn the_layer_ops_are_the_rows_layers_once_each_in_row_order() {
        let mut layers: Vec<&str> = Vec::new();
        for f in UnaryFn::examples() {
            if !layers.contains(&f.layer()) {
                layers.push(f.layer());
            }
        }
        assert_eq!(UnaryFn::LAYER_OPS, layers);
        // A plain layer op is named after its function; the others reach theirs through their
        // attributes (nn/activation.rs).
        for f in UnaryFn::examples() {
            match UnaryFn::plain_layer(f.name()) {
                Some(g) => {
                    assert_eq!((g, g.layer()), (f, f.name()));
                    assert!(!UnaryFn::has_attributed_layer(f.layer()), "{}", f.name());
                }
                None => assert!(UnaryFn::has_attributed_layer(f.layer()), "{}", f.name()),
            }
        }
        assert_eq!(UnaryFn::plain_layer("gelu"), None);
        assert!(UnaryFn::has_attributed_layer("gelu"));
        assert!(!UnaryFn::has_attributed_layer("softmax"));
    }

    #[test]
    fn a_parameter_is_the_kernels_alpha_and_an_attribute() {
        let f = UnaryFn::LeakyRelu { slope: 0.2 };
        assert_eq!(f.alpha(), 0.2);
        assert_eq!(f.attrs(), vec![("slope", "0.2".to_string())]);
        assert_eq!(UnaryFn::Silu.alpha(), 0.0);
        assert!(UnaryFn::Silu.attrs().is_empty());
        assert_eq!(
            serde_json::to_value(f).unwrap(),
            serde_json::json!({ "fn": "leaky_relu", "slope": 0.2 })
        );
        assert_eq!(
            serde_json::to_value(UnaryFn::GeluTanh).unwrap(),
            serde_json::json!({ "fn": "gelu_tanh" })
        );
    }
}
