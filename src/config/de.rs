//! A serde `Deserializer` over the located tree. Errors carry the location of the value or key
//! they are about, so `#[serde(deny_unknown_fields)]` structs give `file:line:col` on the exact
//! key, with a did-you-mean drawn from the struct's own field list.

use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, Visitor};

use super::tree::{Kind, Table, Value};
use crate::diag::{Diagnostic, Loc};

/// An error from deserializing one value; `loc` is filled by the innermost node that knows it.
#[derive(Debug)]
pub struct Error {
    pub message: String,
    pub loc: Option<Loc>,
    pub label: String,
    pub suggest: Option<(String, Vec<&'static str>)>,
    /// The table an unknown or missing key belongs to ("[run]", "a `conv2d` layer"): the key
    /// alone does not say which of several tables with the same keys is meant.
    pub context: Option<String>,
    keyed: bool,
}

impl Error {
    fn at(mut self, loc: Loc) -> Error {
        self.loc.get_or_insert(loc);
        self
    }
    /// Names the table of an unknown or missing key; the innermost table wins.
    fn within(mut self, what: &str) -> Error {
        if self.keyed && self.context.is_none() {
            self.context = Some(what.to_string());
        }
        self
    }
    pub fn into_diagnostic(self) -> Diagnostic {
        let message = match &self.context {
            Some(what) => format!("{} in {what}", self.message),
            None => self.message,
        };
        let mut d = Diagnostic::new(message);
        if let Some(loc) = self.loc {
            d = d.at(loc, self.label);
        }
        if let Some((word, candidates)) = self.suggest {
            d = d.help_did_you_mean(&word, candidates.iter().copied());
            if !candidates.is_empty() && candidates.len() <= 24 {
                d = d.note(format!(
                    "expected one of: {}",
                    candidates
                        .iter()
                        .map(|c| format!("`{c}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            } else if candidates.is_empty() {
                d = d.note("nothing can be set here");
            }
        }
        d
    }
    fn msg(message: String, label: &str) -> Error {
        Error {
            message,
            loc: None,
            label: label.into(),
            suggest: None,
            context: None,
            keyed: false,
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}
impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        Error::msg(msg.to_string(), "here")
    }
    fn invalid_type(unexp: de::Unexpected, exp: &dyn de::Expected) -> Self {
        Error::msg(
            format!("expected {}, found {}", plain(exp), found(&unexp)),
            "wrong type",
        )
    }
    fn invalid_value(unexp: de::Unexpected, exp: &dyn de::Expected) -> Self {
        Error::msg(
            format!("expected {}, found {}", plain(exp), found(&unexp)),
            "invalid value",
        )
    }
    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        Error {
            message: format!("unknown key `{field}`"),
            label: "not a known key here".into(),
            suggest: Some((field.to_string(), expected.to_vec())),
            keyed: true,
            ..Error::msg(String::new(), "")
        }
    }
    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        Error {
            message: format!("unknown value \"{variant}\""),
            label: "not one of the allowed values".into(),
            suggest: Some((variant.to_string(), expected.to_vec())),
            ..Error::msg(String::new(), "")
        }
    }
    fn missing_field(field: &'static str) -> Self {
        Error {
            keyed: true,
            ..Error::msg(
                format!("missing required key `{field}`"),
                &format!("`{field}` must be set in this table"),
            )
        }
    }
}

/// What a value is, as serde says it, but `1e308` rather than its 309 digits.
fn found(unexp: &de::Unexpected) -> String {
    match unexp {
        de::Unexpected::Float(f) if super::tree::short_float(*f).contains('e') => {
            format!("floating point `{}`", super::tree::short_float(*f))
        }
        other => other.to_string(),
    }
}

/// serde's names for Rust types ("u64") mean nothing to a config author.
fn plain(exp: &dyn de::Expected) -> String {
    match exp.to_string().as_str() {
        "u8" | "u16" | "u32" | "u64" | "usize" => "a non-negative integer".into(),
        "i8" | "i16" | "i32" | "i64" | "isize" => "an integer".into(),
        "f32" | "f64" => "a number".into(),
        other => other.into(),
    }
}

/// Deserializes a located value into `T`, turning the first error into a diagnostic.
pub fn from_value<T: DeserializeOwned>(v: &Value) -> Result<T, Diagnostic> {
    T::deserialize(ValueDe(v)).map_err(|e| e.at(v.loc).into_diagnostic())
}

/// [`from_value`] for a table named `what` ("[run]", "a `conv2d` layer"), which an unknown or
/// missing key's message then names.
pub fn from_value_in<T: DeserializeOwned>(v: &Value, what: &str) -> Result<T, Diagnostic> {
    T::deserialize(ValueDe(v)).map_err(|e| e.at(v.loc).within(what).into_diagnostic())
}

pub struct ValueDe<'a>(pub &'a Value);

impl<'de> de::Deserializer<'de> for ValueDe<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let v = self.0;
        let r = match &v.kind {
            Kind::Str(s) => visitor.visit_str(s),
            Kind::Int(i) => visitor.visit_i64(*i),
            Kind::Float(f) => visitor.visit_f64(*f),
            Kind::Bool(b) => visitor.visit_bool(*b),
            Kind::Datetime(d) => visitor.visit_str(d),
            Kind::Array(items) => visitor.visit_seq(SeqAccess {
                items: items.iter(),
            }),
            Kind::Table(t) => visitor.visit_map(MapAccess::new(t)),
        };
        r.map_err(|e| e.at(v.loc))
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let v = self.0;
        let r = match &v.kind {
            Kind::Str(_) => visitor.visit_enum(EnumAccess {
                tag: v,
                content: None,
            }),
            Kind::Table(t) if t.len() == 1 => {
                let (_, e) = t.iter().next().expect("one entry");
                visitor.visit_enum(EnumAccess {
                    tag: v,
                    content: Some(&e.value),
                })
            }
            _ => Err(Error::msg(
                format!(
                    "expected a name or a table with one key, found {}",
                    v.describe()
                ),
                "wrong type",
            )),
        };
        r.map_err(|e| e.at(v.loc))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map struct identifier ignored_any
    }
}

struct SeqAccess<'a> {
    items: std::slice::Iter<'a, Value>,
}

impl<'de> de::SeqAccess<'de> for SeqAccess<'_> {
    type Error = Error;
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        match self.items.next() {
            Some(v) => seed
                .deserialize(ValueDe(v))
                .map(Some)
                .map_err(|e| e.at(v.loc)),
            None => Ok(None),
        }
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct MapAccess<'a> {
    entries: indexmap::map::Iter<'a, String, super::tree::Entry>,
    value: Option<&'a Value>,
}

impl<'a> MapAccess<'a> {
    fn new(t: &'a Table) -> Self {
        MapAccess {
            entries: t.iter(),
            value: None,
        }
    }
}

impl<'de> de::MapAccess<'de> for MapAccess<'_> {
    type Error = Error;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        match self.entries.next() {
            Some((k, e)) => {
                self.value = Some(&e.value);
                let key: de::value::StrDeserializer<'_, Error> = k.as_str().into_deserializer();
                seed.deserialize(key).map(Some).map_err(|err| err.at(e.key))
            }
            None => Ok(None),
        }
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let v = self.value.take().expect("value after key");
        seed.deserialize(ValueDe(v)).map_err(|e| e.at(v.loc))
    }
}

struct EnumAccess<'a> {
    tag: &'a Value,
    content: Option<&'a Value>,
}

impl<'de> de::EnumAccess<'de> for EnumAccess<'_> {
    type Error = Error;
    type Variant = Self;
    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), Error> {
        let (name, loc) = match (&self.tag.kind, self.content) {
            (Kind::Str(s), _) => (s.as_str(), self.tag.loc),
            (Kind::Table(t), Some(_)) => {
                let (k, e) = t.iter().next().expect("one entry");
                (k.as_str(), e.key)
            }
            _ => unreachable!("checked in deserialize_enum"),
        };
        let key: de::value::StrDeserializer<'_, Error> = name.into_deserializer();
        let v = seed.deserialize(key).map_err(|e| e.at(loc))?;
        Ok((v, self))
    }
}

impl EnumAccess<'_> {
    /// The variant's name as written: the string, or the one key of the table.
    fn name(&self) -> &str {
        match (&self.tag.kind, self.content) {
            (Kind::Table(t), Some(_)) => t.keys().next().map(String::as_str).unwrap_or(""),
            _ => self.tag.as_str().unwrap_or(""),
        }
    }
}

impl<'de> de::VariantAccess<'de> for EnumAccess<'_> {
    type Error = Error;
    fn unit_variant(self) -> Result<(), Error> {
        match self.content {
            None => Ok(()),
            Some(v) => Err(
                Error::msg("this option takes no settings".into(), "remove this table").at(v.loc),
            ),
        }
    }
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        match self.content {
            Some(v) => seed
                .deserialize(ValueDe(v))
                .map_err(|e| e.at(v.loc).within(&format!("`{}`", self.name()))),
            None => Err(Error::msg(
                format!("`{}` needs settings: write it as a table", self.name()),
                "expected a table",
            )
            .at(self.tag.loc)),
        }
    }
    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, Error> {
        match self.content {
            Some(v) => de::Deserializer::deserialize_seq(ValueDe(v), visitor),
            None => Err(Error::msg("expected an array".into(), "here").at(self.tag.loc)),
        }
    }
    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let name = self.name();
        match self.content {
            Some(v) => de::Deserializer::deserialize_map(ValueDe(v), visitor)
                .map_err(|e| e.within(&format!("`{name}`"))),
            // A bare name (`augment = ["random_crop"]`) of an option that has settings.
            None => Err(Error::msg(
                format!(
                    "`{name}` needs settings: write it as a table, e.g. {{ {name} = {{ ... }} }}"
                ),
                "expected a table",
            )
            .at(self.tag.loc)),
        }
    }
}

/// The field names a `#[derive(Deserialize)]` struct accepts, read through serde itself, so the
/// reference documentation can be checked against the code (tests/docs_reference.rs).
pub fn field_names<T: DeserializeOwned>() -> &'static [&'static str] {
    struct Probe(Option<&'static [&'static str]>);
    impl<'de> de::Deserializer<'de> for &mut Probe {
        type Error = de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("probe"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            self.0 = Some(fields);
            Err(de::Error::custom("probe"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
        }
    }
    let mut probe = Probe(None);
    let _ = T::deserialize(&mut probe);
    probe.0.unwrap_or(&[])
}
