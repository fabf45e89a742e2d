//! Range-checked value types for config keys, so a bad value is reported at its own location
//! with what was expected ("expected a positive integer, found integer `-1`").

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

/// An integer ≥ 1 (channels, kernel sizes, strides, batch sizes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Positive(pub usize);

/// An integer ≥ 0 (padding, counts that may be zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Count(pub usize);

/// The largest integer a size-like key accepts: no tensor dim is larger, and products of a
/// few dims cannot overflow.
pub const MAX_INT: i64 = i32::MAX as i64;

/// The most elements of synthetic data (train, test and prototypes) a config may ask for:
/// 16 GiB of f32.
pub const MAX_SYNTHETIC_ELEMENTS: usize = 1 << 32;

fn int_visitor<'de, D: Deserializer<'de>>(
    d: D,
    min: i64,
    what: &'static str,
) -> Result<usize, D::Error> {
    struct V(i64, &'static str);
    impl Visitor<'_> for V {
        type Value = usize;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str(self.1)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<usize, E> {
            if v < self.0 || v > MAX_INT {
                return Err(E::invalid_value(de::Unexpected::Signed(v), &self));
            }
            Ok(v as usize)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<usize, E> {
            self.visit_i64(v.min(i64::MAX as u64) as i64)
        }
    }
    d.deserialize_i64(V(min, what))
}

impl<'de> Deserialize<'de> for Positive {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        int_visitor(d, 1, "a positive integer (1 to 2147483647)").map(Positive)
    }
}
impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        int_visitor(d, 0, "a non-negative integer (0 to 2147483647)").map(Count)
    }
}

/// A value for both spatial dimensions: `3` or `[3, 5]` (height, width), as PyTorch accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Pair<T>(pub T, pub T);

impl<'de, T: Deserialize<'de> + Copy> Deserialize<'de> for Pair<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de> + Copy> Visitor<'de> for V<T> {
            type Value = Pair<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number or an array of two numbers [height, width]")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Pair<T>, E> {
                let t = T::deserialize(de::value::I64Deserializer::<E>::new(v))?;
                Ok(Pair(t, t))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Pair<T>, A::Error> {
                let a: T = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let b: T = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(1, &self))?;
                if seq.next_element::<de::IgnoredAny>()?.is_some() {
                    return Err(de::Error::invalid_length(3, &self));
                }
                Ok(Pair(a, b))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

macro_rules! float_range {
    ($(#[$doc:meta])* $name:ident, $what:literal, |$x:ident| $ok:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Serialize)]
        pub struct $name(pub f64);
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl Visitor<'_> for V {
                    type Value = f64;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str($what)
                    }
                    fn visit_f64<E: de::Error>(self, $x: f64) -> Result<f64, E> {
                        if $ok { Ok($x) } else { Err(E::invalid_value(de::Unexpected::Float($x), &self)) }
                    }
                    // An integer is reported as written (`0`, not `0.0`).
                    fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
                        let $x = v as f64;
                        if $ok { Ok($x) } else { Err(E::invalid_value(de::Unexpected::Signed(v), &self)) }
                    }
                }
                d.deserialize_f64(V).map($name)
            }
        }
    };
}

float_range!(
    /// A finite number > 0 (learning rates, epsilons).
    PositiveFloat, "a number greater than 0", |x| x.is_finite() && x > 0.0
);
float_range!(
    /// A finite number ≥ 0 (weight decay, clipping thresholds).
    NonNegFloat, "a number of 0 or more", |x| x.is_finite() && x >= 0.0
);
float_range!(
    /// A number in [0, 1) (dropout probability, momentum, label smoothing).
    Fraction, "a number in [0, 1)", |x| (0.0..1.0).contains(&x)
);
float_range!(
    /// Any finite number.
    Finite, "a finite number", |x| x.is_finite()
);

/// A size in bytes: an integer, or a string with a unit ("512MiB", "1.5GiB", "2GB").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Bytes(pub u64);

impl Bytes {
    pub fn parse(s: &str) -> Option<u64> {
        let s = s.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: f64 = num.parse().ok()?;
        let mult: f64 = match unit.trim() {
            "" | "B" => 1.0,
            "KB" | "kB" => 1e3,
            "MB" => 1e6,
            "GB" => 1e9,
            "KiB" => 1024.0,
            "MiB" => 1024.0 * 1024.0,
            "GiB" => 1024.0 * 1024.0 * 1024.0,
            _ => return None,
        };
        let bytes = n * mult;
        (bytes.is_finite() && bytes >= 1.0).then_some(bytes as u64)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Bytes;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(
                    "a size in bytes: an integer or a string such as \"512MiB\" or \"1.5GiB\"",
                )
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Bytes, E> {
                if v < 1 {
                    return Err(E::invalid_value(de::Unexpected::Signed(v), &self));
                }
                Ok(Bytes(v as u64))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Bytes, E> {
                Bytes::parse(v)
                    .map(Bytes)
                    .ok_or_else(|| E::invalid_value(de::Unexpected::Str(v), &self))
            }
        }
        d.deserialize_any(V)
    }
}

/// Bytes as people read them: 1.5 GiB, 512 MiB.
pub fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_units() {
        assert_eq!(Bytes::parse("512MiB"), Some(512 << 20));
        assert_eq!(Bytes::parse("1.5GiB"), Some(3 << 29));
        assert_eq!(Bytes::parse("2GB"), Some(2_000_000_000));
        assert_eq!(Bytes::parse("12 parsecs"), None);
        assert_eq!(Bytes::parse("0"), None);
    }
}
