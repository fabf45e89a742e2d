//! `TRAINER_GPU_FAULT`: a testing hook that makes the device fail on purpose, through wgpu's
//! real failure paths, since no test machine can run out of memory or lose its GPU on demand
//! (lavapipe allocates lazily and never resets):
//! - `lost@N`: right after step N is submitted, `Device::destroy()`. wgpu invalidates the
//!   device, fails every later call and fires the device-lost callback, as on a driver reset.
//! - `error@N`: while step N is recorded, a buffer above `max_buffer_size` is created outside
//!   any error scope, so wgpu's uncaptured-error handler gets a real error mid-step, the
//!   path an out-of-memory error in a step takes.
//! - `alloc@REGION` (`state`, `grads`, `inputs`, `arena`): that region's buffer is asked for
//!   above `max_buffer_size`, past our own check, so wgpu refuses it inside the same error
//!   scopes that catch an out-of-memory error, and the same report follows.
//!
//! For tests only; a malformed value is refused with exit 2, like the other GPU settings.

use crate::schedule::Region;

use super::GpuError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Lost(u64),
    Error(u64),
    Alloc(Region),
}

const REGIONS: [(&str, Region); 4] = [
    ("state", Region::State),
    ("grads", Region::Grads),
    ("inputs", Region::Inputs),
    ("arena", Region::Arena),
];

impl Fault {
    pub fn from_env() -> Result<Option<Fault>, GpuError> {
        match std::env::var("TRAINER_GPU_FAULT") {
            Ok(v) if !v.is_empty() => Fault::parse(&v).map(Some).map_err(GpuError::Plan),
            _ => Ok(None),
        }
    }

    fn parse(v: &str) -> Result<Fault, String> {
        let bad = || {
            format!(
                "TRAINER_GPU_FAULT={v}: expected lost@STEP, error@STEP or alloc@REGION (state, grads, inputs, arena); it is a testing hook"
            )
        };
        let (kind, at) = v.trim().split_once('@').ok_or_else(bad)?;
        let step = || at.parse::<u64>().ok().filter(|&s| s > 0).ok_or_else(bad);
        match kind {
            "lost" => Ok(Fault::Lost(step()?)),
            "error" => Ok(Fault::Error(step()?)),
            "alloc" => REGIONS
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(at))
                .map(|&(_, r)| Fault::Alloc(r))
                .ok_or_else(bad),
            _ => Err(bad()),
        }
    }

    /// How the hook is spelled, for messages.
    pub fn describe(&self) -> String {
        let at = match self {
            Fault::Lost(n) | Fault::Error(n) => n.to_string(),
            Fault::Alloc(r) => REGIONS
                .iter()
                .find(|(_, x)| x == r)
                .map_or("?", |(name, _)| name)
                .to_string(),
        };
        let kind = match self {
            Fault::Lost(_) => "lost",
            Fault::Error(_) => "error",
            Fault::Alloc(_) => "alloc",
        };
        format!("TRAINER_GPU_FAULT={kind}@{at}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse_and_print_back() {
        for (text, fault) in [
            ("lost@3", Fault::Lost(3)),
            ("error@12", Fault::Error(12)),
            ("alloc@arena", Fault::Alloc(Region::Arena)),
            ("alloc@State", Fault::Alloc(Region::State)),
        ] {
            assert_eq!(Fault::parse(text), Ok(fault));
        }
        assert_eq!(Fault::Lost(3).describe(), "TRAINER_GPU_FAULT=lost@3");
        assert_eq!(
            Fault::Alloc(Region::Grads).describe(),
            "TRAINER_GPU_FAULT=alloc@grads"
        );
        for bad in ["lost", "lost@0", "lost@x", "oom@3", "alloc@heap", ""] {
            let e = Fault::parse(bad).expect_err(bad);
            assert!(e.contains("lost@STEP"), "{e}");
        }
    }
}
