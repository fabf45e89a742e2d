//! Host memory: how much this process may still use, and big buffers allocated so that a
//! shortage is an error that says how much was asked and how much there is, never an abort
//! ("memory allocation of ... bytes failed", exit 134) or a kill by the kernel's OOM killer
//! half-way through filling them.
//!
//! Linux overcommits: an allocation larger than what is free usually succeeds and the process
//! is killed when it touches the pages. So a buffer is first compared with [`available`]
//! (what the kernel, the cgroup and `ulimit -v` allow), then reserved with
//! `Vec::try_reserve_exact`, which catches what the comparison cannot (no measure on this
//! system, an address-space limit, a race with another process).

use crate::config::values::human;

/// Overrides what the system reports (a size: "64GiB", "512MiB", bytes): for machines where
/// the measure is wrong, and for tests.
pub const OVERRIDE_VAR: &str = "TRAINER_HOST_MEMORY";

/// Bytes this process may still allocate, and what says so.
#[derive(Clone, Debug, PartialEq)]
pub struct Available {
    pub bytes: u64,
    /// "MemAvailable in /proc/meminfo", "the cgroup's memory.max", ...
    pub source: String,
}

/// Why a buffer was refused.
#[derive(Clone, Debug, PartialEq)]
pub struct Shortage {
    /// Bytes asked for.
    pub needed: u64,
    /// What the system said was available, when it says.
    pub available: Option<Available>,
    /// The comparison passed (or could not be made) but the allocation failed.
    pub refused: bool,
}

impl std::fmt::Display for Shortage {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let avail = match &self.available {
            Some(a) => format!("{} is available ({})", human(a.bytes), a.source),
            None => "the system does not say how much is available".into(),
        };
        if self.refused {
            write!(
                f,
                "allocating {} of host memory failed; {avail}",
                human(self.needed)
            )
        } else {
            write!(f, "it needs {} of host memory; {avail}", human(self.needed))
        }
    }
}

/// What this process may still allocate: the least of the kernel's MemAvailable, the room
/// left under its cgroup's `memory.max`, and the address space left under `ulimit -v` (on
/// macOS: the physical memory); [`OVERRIDE_VAR`] replaces all of them. `Ok(None)` where
/// nothing says; an error for an override that is not a size.
pub fn available() -> Result<Option<Available>, String> {
    if let Ok(v) = std::env::var(OVERRIDE_VAR) {
        let bytes = crate::config::values::Bytes::parse(&v).ok_or_else(|| {
            format!("{OVERRIDE_VAR}={v:?} is not a size (for example \"64GiB\" or \"512MiB\")")
        })?;
        return Ok(Some(Available {
            bytes,
            source: format!("{OVERRIDE_VAR}={v}"),
        }));
    }
    Ok(measured())
}

#[cfg(target_os = "linux")]
fn measured() -> Option<Available> {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let mut limits: Vec<Available> = Vec::new();
    if let Some(kib) = read("/proc/meminfo").and_then(|t| field(&t, "MemAvailable:")) {
        limits.push(Available {
            bytes: kib * 1024,
            source: "MemAvailable in /proc/meminfo".into(),
        });
    }
    // cgroup v2: the process's group is the `0::/path` line.
    let group = read("/proc/self/cgroup").and_then(|t| {
        t.lines()
            .find_map(|l| l.strip_prefix("0::").map(str::to_string))
    });
    if let Some(group) = group {
        let dir = format!("/sys/fs/cgroup{}", group.trim_end());
        let max = read(&format!("{dir}/memory.max")).and_then(|t| t.trim().parse::<u64>().ok());
        let current =
            read(&format!("{dir}/memory.current")).and_then(|t| t.trim().parse::<u64>().ok());
        if let (Some(max), Some(current)) = (max, current) {
            limits.push(Available {
                bytes: max.saturating_sub(current),
                source: format!("the cgroup's memory.max of {}", human(max)),
            });
        }
    }
    // `ulimit -v`: what is mapped already counts against it.
    let limit = read("/proc/self/limits").and_then(|t| {
        let line = t.lines().find(|l| l.starts_with("Max address space"))?;
        line.split_whitespace().nth(3)?.parse::<u64>().ok()
    });
    let mapped = read("/proc/self/status").and_then(|t| field(&t, "VmSize:"));
    if let (Some(limit), Some(kib)) = (limit, mapped) {
        limits.push(Available {
            bytes: limit.saturating_sub(kib * 1024),
            source: format!("ulimit -v of {}", human(limit)),
        });
    }
    limits.into_iter().min_by_key(|a| a.bytes)
}

/// The number after `name` in a `/proc` file of `Name:   value kB` lines.
#[cfg(target_os = "linux")]
fn field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    line[name.len()..].split_whitespace().next()?.parse().ok()
}

#[cfg(target_os = "macos")]
fn measured() -> Option<Available> {
    // macOS has no cheap "available" figure (it compresses and swaps): the physical memory
    // is the most a buffer can be.
    let out = std::process::Command::new("sysctl")
        .args(["-n", "hw.memsize"])
        .output()
        .ok()?;
    let bytes = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    Some(Available {
        bytes,
        source: "hw.memsize".into(),
    })
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
fn measured() -> Option<Available> {
    None
}

/// Refuses `needed` bytes when the system says fewer are available.
pub fn check(needed: u64) -> Result<(), MemoryError> {
    let available = available().map_err(MemoryError::Setting)?;
    match available {
        Some(a) if needed > a.bytes => Err(MemoryError::Short(Shortage {
            needed,
            available: Some(a),
            refused: false,
        })),
        _ => Ok(()),
    }
}

/// Why [`check`] or an allocation refused.
#[derive(Clone, Debug, PartialEq)]
pub enum MemoryError {
    Short(Shortage),
    /// [`OVERRIDE_VAR`] is set to something that is not a size (a user error too).
    Setting(String),
}

impl std::fmt::Display for MemoryError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            MemoryError::Short(s) => s.fmt(f),
            MemoryError::Setting(s) => f.write_str(s),
        }
    }
}

/// An empty vector with room for exactly `len` elements, or the shortage. Callers [`check`]
/// first what they will allocate in all (one comparison for several buffers, none for a
/// buffer made again each batch whose size was checked once); this catches the rest.
pub fn try_reserved<T>(len: usize) -> Result<Vec<T>, Shortage> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| Shortage {
        needed: bytes_of::<T>(len),
        available: available().ok().flatten(),
        refused: true,
    })?;
    Ok(v)
}

/// `len` copies of `value`, or the shortage (see [`try_reserved`]).
pub fn try_filled<T: Clone>(len: usize, value: T) -> Result<Vec<T>, Shortage> {
    let mut v = try_reserved(len)?;
    v.resize(len, value);
    Ok(v)
}

fn bytes_of<T>(len: usize) -> u64 {
    (len as u64).saturating_mul(std::mem::size_of::<T>() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_something_here() {
        // The test machines run Linux; elsewhere `None` is allowed.
        if cfg!(target_os = "linux") {
            let a = measured().expect("a measure on Linux");
            assert!(a.bytes > 0, "{a:?}");
        }
    }

    #[test]
    fn an_impossible_buffer_is_an_error_not_an_abort() {
        // More than any machine: refused by the comparison, and by the allocator alone.
        let huge = usize::MAX / 16;
        if measured().is_some() {
            let e = check(u64::MAX / 2).unwrap_err();
            assert!(e.to_string().contains("of host memory"), "{e}");
        }
        let e = try_reserved::<u64>(huge).unwrap_err();
        assert!(e.refused && e.needed == huge as u64 * 8, "{e:?}");
        let v = try_filled(1000, 7u8).unwrap();
        assert_eq!((v.len(), v[999]), (1000, 7));
    }
}
