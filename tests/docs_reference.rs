//! docs/config.md is the reference for the config language. This test fails when the code has a
//! section, key, op, attribute or named value that the reference does not document, and lists
//! every missing item at once.
//!
//! The lists come from the code itself: section names from `SECTIONS`, keys from serde (the
//! field names of each `deny_unknown_fields` struct, the variant names of each enum, both after
//! `rename`), the model's key lists, each op's attribute keys, and the FLOPs of each function of
//! the elementwise table. A key counts as documented when it appears as `` `key` `` in its
//! section; a named value when it appears as `"value"` or `` `value` `` there.

use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, Visitor};

use trainer::config::de::field_names;
use trainer::config::model::{
    BLOCK_KEYS, BLOCK_USE_KEYS, InputDType, InputKeys, LAYER_KEYS, MODEL_KEYS, ShortcutKeys,
    ShortcutKind,
};
use trainer::config::optimizer::{Adam, OPTIMIZERS, Sgd};
use trainer::config::{
    Augment, Checkpointing, Data, Dataset, Device, Log, Loss, LossKind, Normalize, OnNonfinite,
    Progress, Run, SECTIONS, Schedule, ScheduleKind, Train,
};
use trainer::nn::{LAYER_OPS, LayerOp};
use trainer::ops::UnaryFn;

const DOC: &str = "docs/config.md";

/// One heading of the document and its text: everything up to the next heading of the same or
/// a higher level (so a section includes its subsections).
struct Section {
    level: usize,
    title: String,
    text: String,
}

fn sections(doc: &str) -> Vec<Section> {
    let lines: Vec<&str> = doc.lines().collect();
    // Headings outside fenced code blocks (a `# comment` in a TOML example is not one).
    let mut headings = Vec::new();
    let mut fenced = false;
    for (i, line) in lines.iter().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let level = line.chars().take_while(|&c| c == '#').count();
        if level > 0 && line[level..].starts_with(' ') {
            headings.push((i, level, line[level..].trim().to_string()));
        }
    }
    headings
        .iter()
        .enumerate()
        .map(|(h, (start, level, title))| {
            let end = headings[h + 1..]
                .iter()
                .find(|(_, l, _)| l <= level)
                .map_or(lines.len(), |(i, _, _)| *i);
            Section {
                level: *level,
                title: title.clone(),
                text: lines[start + 1..end].join("\n"),
            }
        })
        .collect()
}

/// A heading's title without backticks: `` ### `conv2d` `` and `### conv2d` both name conv2d.
fn find<'a>(all: &'a [Section], level: usize, title: &str) -> Option<&'a Section> {
    all.iter()
        .find(|s| s.level == level && s.title.replace('`', "") == title)
}

/// The variant names of a `Deserialize` enum, as a config writes them (after `rename_all`).
fn variant_names<T: DeserializeOwned>() -> &'static [&'static str] {
    let mut probe = Probe {
        variant: None,
        found: None,
    };
    let _ = T::deserialize(&mut probe);
    probe.found.unwrap_or(&[])
}

/// The field names of struct variant `variant` of a `Deserialize` enum.
fn variant_fields<T: DeserializeOwned>(variant: &'static str) -> &'static [&'static str] {
    let mut probe = Probe {
        variant: Some(variant),
        found: None,
    };
    let _ = T::deserialize(&mut probe);
    probe.found.unwrap_or(&[])
}

/// A deserializer that only records what serde asks for: the variant list of an enum, or the
/// field list of one of its struct variants.
struct Probe {
    variant: Option<&'static str>,
    found: Option<&'static [&'static str]>,
}

fn stop() -> de::value::Error {
    de::Error::custom("probe")
}

impl<'de> de::Deserializer<'de> for &mut Probe {
    type Error = de::value::Error;
    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(stop())
    }
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        match self.variant {
            None => {
                self.found = Some(variants);
                Err(stop())
            }
            Some(name) => visitor.visit_enum(VariantProbe {
                name,
                found: &mut self.found,
            }),
        }
    }
    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct identifier
        ignored_any
    }
}

struct VariantProbe<'a> {
    name: &'static str,
    found: &'a mut Option<&'static [&'static str]>,
}

impl<'de> de::EnumAccess<'de> for VariantProbe<'_> {
    type Error = de::value::Error;
    type Variant = Self;
    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Self), Self::Error> {
        let name: de::value::StrDeserializer<'_, Self::Error> = self.name.into_deserializer();
        let v = seed.deserialize(name)?;
        Ok((v, self))
    }
}

impl<'de> de::VariantAccess<'de> for VariantProbe<'_> {
    type Error = de::value::Error;
    fn unit_variant(self) -> Result<(), Self::Error> {
        Err(stop())
    }
    fn newtype_variant_seed<S: DeserializeSeed<'de>>(self, _: S) -> Result<S::Value, Self::Error> {
        Err(stop())
    }
    fn tuple_variant<V: Visitor<'de>>(self, _: usize, _: V) -> Result<V::Value, Self::Error> {
        Err(stop())
    }
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Self::Error> {
        *self.found = Some(fields);
        Err(stop())
    }
}

/// What one section of the reference must mention.
#[derive(Default)]
struct Expect {
    /// Keys, written `` `key` ``.
    keys: Vec<(&'static str, &'static str)>,
    /// Named values, written `"value"` or `` `value` ``.
    values: Vec<(&'static str, &'static str)>,
}

impl Expect {
    fn keys(mut self, of: &'static str, keys: &[&'static str]) -> Self {
        self.keys.extend(keys.iter().map(|k| (of, *k)));
        self
    }
    fn values(mut self, of: &'static str, values: &[&'static str]) -> Self {
        self.values.extend(values.iter().map(|v| (of, *v)));
        self
    }
}

/// Every section and the lists from the code it must document. Adding a section to
/// `SECTIONS` without adding it here fails the test too.
fn expectations() -> Vec<(&'static str, Expect)> {
    let random_crop = variant_fields::<Augment>("random_crop");
    vec![
        (
            "run",
            Expect::default()
                .keys("Run", field_names::<Run>())
                .values("Device", variant_names::<Device>()),
        ),
        (
            "data",
            Expect::default()
                .keys("Data", field_names::<Data>())
                .keys("Normalize", field_names::<Normalize>())
                .keys("Augment::RandomCrop", random_crop)
                .values("Dataset", variant_names::<Dataset>())
                .values("Augment", variant_names::<Augment>()),
        ),
        (
            "model",
            Expect::default()
                .keys("MODEL_KEYS", MODEL_KEYS)
                .keys("BLOCK_KEYS", BLOCK_KEYS)
                .keys("LAYER_KEYS", LAYER_KEYS)
                .keys("BLOCK_USE_KEYS", BLOCK_USE_KEYS)
                .keys("InputKeys", field_names::<InputKeys>())
                .keys("ShortcutKeys", field_names::<ShortcutKeys>())
                .values("InputDType", variant_names::<InputDType>())
                .values("ShortcutKind", variant_names::<ShortcutKind>()),
        ),
        (
            "loss",
            Expect::default()
                .keys("Loss", field_names::<Loss>())
                .values("LossKind", variant_names::<LossKind>()),
        ),
        (
            "optimizer",
            Expect::default()
                .keys("Sgd", field_names::<Sgd>())
                .keys("Adam", field_names::<Adam>())
                .values("OPTIMIZERS", OPTIMIZERS),
        ),
        (
            "schedule",
            Expect::default()
                .keys("Schedule", field_names::<Schedule>())
                .values("ScheduleKind", variant_names::<ScheduleKind>()),
        ),
        (
            "train",
            Expect::default()
                .keys("Train", field_names::<Train>())
                .values("Checkpointing", variant_names::<Checkpointing>())
                .values("OnNonfinite", variant_names::<OnNonfinite>()),
        ),
        (
            "log",
            Expect::default()
                .keys("Log", field_names::<Log>())
                .values("Progress", variant_names::<Progress>()),
        ),
    ]
}

fn has_key(text: &str, key: &str) -> bool {
    text.contains(&format!("`{key}`"))
}

fn has_value(text: &str, value: &str) -> bool {
    text.contains(&format!("\"{value}\"")) || text.contains(&format!("`{value}`"))
}

#[test]
fn the_reference_documents_every_section_key_and_op() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(DOC);
    let doc = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let all = sections(&doc);
    let mut missing: Vec<String> = Vec::new();

    let expected = expectations();
    for name in SECTIONS {
        if !expected.iter().any(|(s, _)| s == name) {
            missing.push(format!(
                "tests/docs_reference.rs: section [{name}] is in SECTIONS but this test does not \
                 know which keys it has: add it to expectations()"
            ));
        }
    }
    for (name, expect) in &expected {
        if !SECTIONS.contains(name) {
            missing.push(format!(
                "tests/docs_reference.rs: expectations() lists [{name}], which is not in SECTIONS"
            ));
            continue;
        }
        let Some(section) = find(&all, 2, &format!("[{name}]")) else {
            missing.push(format!("section [{name}]: no `## [{name}]` heading"));
            continue;
        };
        for (of, key) in &expect.keys {
            if !has_key(&section.text, key) {
                missing.push(format!(
                    "section [{name}]: key `{key}` (from {of}) is not mentioned as `{key}`"
                ));
            }
        }
        for (of, value) in &expect.values {
            if !has_value(&section.text, value) {
                missing.push(format!(
                    "section [{name}]: value \"{value}\" (from {of}) is not mentioned"
                ));
            }
        }
    }

    if find(&all, 2, "Ops").is_none() {
        missing.push("no `## Ops` heading".into());
    }
    for op in LAYER_OPS {
        let Some(section) = find(&all, 3, op) else {
            missing.push(format!("op {op}: no `### {op}` heading"));
            continue;
        };
        let keys = LayerOp::attribute_keys(op).expect("every op in LAYER_OPS has attributes");
        for key in keys {
            if !has_key(&section.text, key) {
                missing.push(format!(
                    "op {op}: attribute `{key}` is not mentioned in its `### {op}` subsection"
                ));
            }
        }
    }

    // Each function of the elementwise table: its layer op's subsection and the FLOPs table
    // give its cost (both gelu rows cost the same, as the reference says).
    let flops = find(&all, 2, "FLOPs");
    for f in UnaryFn::examples() {
        let (op, cost) = (f.layer(), f.cost());
        if let Some(section) = find(&all, 3, op)
            && !section.text.contains(&format!("FLOPs: {cost} per element"))
        {
            missing.push(format!(
                "op {op}: \"FLOPs: {cost} per element\" ({} in the elementwise table) is not in \
                 its `### {op}` subsection",
                f.name()
            ));
        }
        let row = |line: &str| {
            line.starts_with('|')
                && line.contains(&format!("`{op}`"))
                && line.contains(&format!("| {cost} per element |"))
        };
        if !flops.is_some_and(|s| s.text.lines().any(row)) {
            missing.push(format!(
                "FLOPs: no row of its table gives `{op}` {cost} per element ({} in the \
                 elementwise table)",
                f.name()
            ));
        }
    }

    assert!(
        missing.is_empty(),
        "{DOC} lacks {} item(s) that exist in the code:\n  - {}\n",
        missing.len(),
        missing.join("\n  - ")
    );
}

/// The probes above must see what serde sees, or the main test would pass vacuously.
#[test]
fn the_probes_read_names_from_serde() {
    assert_eq!(variant_names::<Device>(), ["auto", "gpu", "cpu"]);
    assert!(variant_names::<Dataset>().contains(&"fashion-mnist"));
    assert_eq!(variant_names::<Augment>(), ["random_crop", "hflip"]);
    assert_eq!(
        variant_fields::<Augment>("random_crop"),
        ["size", "padding"]
    );
    assert!(variant_names::<Checkpointing>().contains(&"memory_budget"));
    assert_eq!(
        serde_json::to_value(Dataset::FashionMnist).unwrap(),
        serde_json::json!("fashion-mnist")
    );
    assert!(field_names::<Run>().contains(&"seed"));
    for op in LAYER_OPS {
        assert!(LayerOp::attribute_keys(op).is_some(), "{op}");
    }
    assert!(
        LayerOp::attribute_keys("conv2d")
            .unwrap()
            .contains(&"kernel")
    );
}

#[test]
fn sections_nest_by_heading_level() {
    let doc = "# T\nintro\n## [a]\n`x`\n### sub\n`y`\n```toml\n# not a heading\n```\n## [b]\n`z`\n";
    let all = sections(doc);
    let a = find(&all, 2, "[a]").unwrap();
    assert!(a.text.contains("`x`") && a.text.contains("`y`") && !a.text.contains("`z`"));
    assert!(find(&all, 1, "not a heading").is_none());
    assert_eq!(
        find(&all, 3, "sub").unwrap().text.trim(),
        "`y`\n```toml\n# not a heading\n```"
    );
}
