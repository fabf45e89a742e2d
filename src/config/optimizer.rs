//! The optimizer, all in one place: the `[optimizer]` section (one struct per kind, so a key of
//! another kind is an error), its checks, the learning rate the schedule starts from, and the
//! update op each trainable parameter gets in the training graph, with the state tensors it
//! keeps (`crate::training` adds them; the config layer builds no graph nodes itself).

use serde::{Deserialize, Serialize};

use super::de::{field_names, from_value_in};
use super::tree::Value;
use super::values::{Fraction, NonNegFloat, PositiveFloat};
use crate::diag::{Diagnostic, Loc};
use crate::ops::{AdamStep, OpKind, SgdStep};

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Optimizer {
    Sgd(Sgd),
    Adam(Adam),
    Adamw(Adam),
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Sgd {
    #[serde(rename = "kind", skip_serializing)]
    pub _kind: Option<String>,
    pub lr: PositiveFloat,
    #[serde(default = "zero_fraction")]
    pub momentum: Fraction,
    /// Dampening of the momentum buffer, as in torch.optim.SGD.
    #[serde(default = "zero_fraction")]
    pub dampening: Fraction,
    #[serde(default)]
    pub nesterov: bool,
    #[serde(default = "zero_nonneg")]
    pub weight_decay: NonNegFloat,
    /// Which parameters `weight_decay` applies to.
    #[serde(default, skip_serializing_if = "DecayRule::is_all")]
    pub decay: DecayRule,
    /// Parameters `weight_decay` does not apply to: name patterns (`*` matches any text).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub no_decay: Vec<String>,
    /// Clip the global L2 norm of all gradients to this value.
    pub clip_grad_norm: Option<PositiveFloat>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Adam {
    #[serde(rename = "kind", skip_serializing)]
    pub _kind: Option<String>,
    pub lr: PositiveFloat,
    #[serde(default = "default_betas")]
    pub betas: [Fraction; 2],
    #[serde(default = "default_eps")]
    pub eps: PositiveFloat,
    /// Adam: L2 added to the gradient; AdamW: decoupled decay of the weights.
    #[serde(default = "zero_nonneg")]
    pub weight_decay: NonNegFloat,
    /// Which parameters `weight_decay` applies to.
    #[serde(default, skip_serializing_if = "DecayRule::is_all")]
    pub decay: DecayRule,
    /// Parameters `weight_decay` does not apply to: name patterns (`*` matches any text).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub no_decay: Vec<String>,
    pub clip_grad_norm: Option<PositiveFloat>,
}

/// `decay`: the parameters weight decay applies to, before `no_decay` takes some out.
/// (Left out of `config.resolved.toml` when it is the default, as `no_decay` when empty, so
/// configs written before these keys keep their hash.)
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DecayRule {
    /// Every trainable parameter (torch.optim with one parameter group).
    #[default]
    All,
    /// Parameters of rank ≥ 2 only (weights of linear and conv layers, embeddings), not
    /// biases or norm weights: nanoGPT's `configure_optimizers`.
    Matrices,
}

impl DecayRule {
    fn is_all(&self) -> bool {
        *self == DecayRule::All
    }
}

/// Whether glob `pattern` matches all of `name`; `*` matches any text, dots included.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty(); // no `*`: the whole name
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

impl Optimizer {
    /// The base learning rate (the schedule scales it per step).
    pub fn lr(&self) -> f64 {
        match self {
            Optimizer::Sgd(s) => s.lr.0,
            Optimizer::Adam(a) | Optimizer::Adamw(a) => a.lr.0,
        }
    }

    /// The global gradient-norm clip, if any.
    pub fn clip_grad_norm(&self) -> Option<f64> {
        match self {
            Optimizer::Sgd(s) => s.clip_grad_norm.map(|c| c.0),
            Optimizer::Adam(a) | Optimizer::Adamw(a) => a.clip_grad_norm.map(|c| c.0),
        }
    }

    /// The decay rule and the `no_decay` patterns.
    fn groups(&self) -> (DecayRule, &[String]) {
        match self {
            Optimizer::Sgd(s) => (s.decay, &s.no_decay),
            Optimizer::Adam(a) | Optimizer::Adamw(a) => (a.decay, &a.no_decay),
        }
    }

    /// Whether `weight_decay` applies to the trainable parameter `name` of rank `rank`.
    pub fn decays(&self, name: &str, rank: usize) -> bool {
        let (rule, no_decay) = self.groups();
        (rule == DecayRule::All || rank >= 2) && !no_decay.iter().any(|p| glob_match(p, name))
    }

    /// Each `no_decay` pattern must match a trainable parameter of the model (`names`), so
    /// that a typo cannot silently leave a parameter decaying; `at(i)` locates pattern `i`.
    pub fn check_groups(
        &self,
        names: &[&str],
        at: impl Fn(usize) -> Loc,
    ) -> Result<(), Diagnostic> {
        let (_, no_decay) = self.groups();
        for (i, pattern) in no_decay.iter().enumerate() {
            if names.iter().any(|n| glob_match(pattern, n)) {
                continue;
            }
            let mut shown: Vec<&str> = names.iter().copied().take(6).collect();
            if names.len() > shown.len() {
                shown.push("...");
            }
            return Err(Diagnostic::new(format!(
                "`no_decay` pattern \"{pattern}\" matches no trainable parameter"
            ))
            .at(at(i), "matches nothing")
            .help_did_you_mean(pattern, names.iter().copied())
            .note(format!(
                "parameters are named <layer>.<parameter>, `*` matching any text: {}",
                shown.join(", ")
            )));
        }
        Ok(())
    }

    /// The update op of one parameter and the names of the state tensors it reads and
    /// rewrites after (parameter, gradient), as torch.optim names them in its state dict.
    /// `clip`: the op also takes the clipping coefficient as its last input. `decay`: whether
    /// `weight_decay` applies to this parameter ([`Optimizer::decays`]).
    pub fn update(&self, clip: bool, decay: bool) -> (OpKind, &'static [&'static str]) {
        let weight_decay = |wd: NonNegFloat| if decay { wd.0 } else { 0.0 };
        match self {
            Optimizer::Sgd(s) => {
                let momentum = s.momentum.0;
                let op = OpKind::SgdStep(SgdStep {
                    momentum,
                    dampening: s.dampening.0,
                    nesterov: s.nesterov,
                    weight_decay: weight_decay(s.weight_decay),
                    clip,
                });
                let states: &[&str] = if momentum != 0.0 {
                    &["momentum_buffer"]
                } else {
                    &[]
                };
                (op, states)
            }
            Optimizer::Adam(a) | Optimizer::Adamw(a) => {
                let op = OpKind::AdamStep(AdamStep {
                    beta1: a.betas[0].0,
                    beta2: a.betas[1].0,
                    eps: a.eps.0,
                    weight_decay: weight_decay(a.weight_decay),
                    decoupled: matches!(self, Optimizer::Adamw(_)),
                    clip,
                });
                (op, &["exp_avg", "exp_avg_sq"])
            }
        }
    }

    /// Checks across keys that serde cannot make; `at` locates a key of `[optimizer]`.
    pub fn check(&self, at: impl Fn(&str) -> Loc) -> Result<(), Diagnostic> {
        if let Optimizer::Sgd(sgd) = self
            && sgd.nesterov
            && (sgd.momentum.0 == 0.0 || sgd.dampening.0 != 0.0)
        {
            return Err(Diagnostic::new(
                "nesterov needs momentum > 0 and dampening = 0 (as torch.optim.SGD requires)",
            )
            .at(at("nesterov"), "nesterov set here")
            .note(format!(
                "momentum = {}, dampening = {}",
                sgd.momentum.0, sgd.dampening.0
            )));
        }
        Ok(())
    }

    /// Keys of every optimizer kind (for "which section has this key").
    pub fn all_keys() -> [&'static [&'static str]; 2] {
        [field_names::<Sgd>(), field_names::<Adam>()]
    }
}

fn zero_fraction() -> Fraction {
    Fraction(0.0)
}
fn zero_nonneg() -> NonNegFloat {
    NonNegFloat(0.0)
}
fn default_betas() -> [Fraction; 2] {
    [Fraction(0.9), Fraction(0.999)]
}
fn default_eps() -> PositiveFloat {
    PositiveFloat(1e-8)
}

pub const OPTIMIZERS: &[&str] = &["sgd", "adam", "adamw"];

/// `[optimizer]` is read into the struct of its `kind`, so a key of another kind is an error.
pub fn parse(v: &Value) -> Result<Optimizer, Diagnostic> {
    let Some(t) = v.as_table() else {
        return Err(Diagnostic::new("[optimizer] must be a table")
            .at(v.loc, format!("found {}", v.describe())));
    };
    let kind = match t.get("kind") {
        Some(e) => &e.value,
        None => {
            return Err(
                Diagnostic::new("missing required key `kind` in [optimizer]")
                    .at(v.loc, "say which optimizer")
                    .note(format!("one of: {}", OPTIMIZERS.join(", "))),
            );
        }
    };
    let name = match kind.as_str() {
        Some(k) if OPTIMIZERS.contains(&k) => k,
        Some(other) => {
            return Err(Diagnostic::new(format!("unknown optimizer \"{other}\""))
                .at(kind.loc, "not an optimizer")
                .help_did_you_mean(other, OPTIMIZERS.iter().copied())
                .note(format!("one of: {}", OPTIMIZERS.join(", "))));
        }
        None => {
            return Err(Diagnostic::new("`kind` must be a string")
                .at(kind.loc, format!("found {}", kind.describe())));
        }
    };
    let keys = |k: &str| match k {
        "sgd" => field_names::<Sgd>(),
        _ => field_names::<Adam>(),
    };
    // A key of another optimizer (`betas` under sgd) is a mix-up, not a typo: say whose it is.
    for (k, e) in t {
        if keys(name).contains(&k.as_str()) {
            continue;
        }
        let owners: Vec<&str> = OPTIMIZERS
            .iter()
            .copied()
            .filter(|o| keys(o).contains(&k.as_str()))
            .collect();
        if !owners.is_empty() {
            return Err(
                Diagnostic::new(format!("`{k}` is not an option of optimizer \"{name}\""))
                    .at(e.key, format!("{name} has no `{k}`"))
                    .also(kind.loc, "optimizer chosen here")
                    .note(format!("`{k}` belongs to: {}", owners.join(", "))),
            );
        }
    }
    let what = format!("[optimizer] (kind \"{name}\")");
    Ok(match name {
        "sgd" => Optimizer::Sgd(from_value_in(v, &what)?),
        "adam" => Optimizer::Adam(from_value_in(v, &what)?),
        _ => {
            let mut adamw: Adam = from_value_in(v, &what)?;
            // Adam and AdamW share their keys but not this default (torch.optim.AdamW's).
            if v.get("weight_decay").is_none() {
                adamw.weight_decay = NonNegFloat(0.01);
            }
            Optimizer::Adamw(adamw)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_whole_names() {
        let yes = [
            ("*.bias", "h.0.attn.c_proj.bias"),
            ("*.ln_*.weight", "h.0.ln_1.weight"),
            ("fc.bias", "fc.bias"),
            ("*", "anything"),
            ("a*b*c", "abc"),
            ("a*b*c", "a.b.b.c"),
            ("h.*.ln_1.*", "h.11.ln_1.bias"),
        ];
        for (p, n) in yes {
            assert!(glob_match(p, n), "{p} should match {n}");
        }
        let no = [
            ("*.bias", "fc.bias_ext"),
            ("fc.bias", "fc.biass"),
            ("fc", "fc.weight"),
            ("*.ln_*.weight", "h.0.ln_1.bias"),
            ("a*b*c", "acb"),
            ("ab*ba", "aba"), // prefix and suffix may not overlap
        ];
        for (p, n) in no {
            assert!(!glob_match(p, n), "{p} should not match {n}");
        }
    }
}
