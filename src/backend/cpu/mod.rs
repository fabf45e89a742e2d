//! The CPU backend: the reference every GPU kernel is tested against and the fallback where no
//! GPU exists. The kernels live with their ops (`ops::*::eval`) over `kernel::cpu`; this module
//! holds the executors: `CpuExec` runs a plan, `interpret` evaluates a graph eagerly (the
//! oracle of the kernel tests).

// Raw views of the regions, over ranges the plan proved disjoint.
#[allow(unsafe_code)]
mod exec;
pub mod interpret;

pub use exec::{CpuExec, on_pool};
pub use interpret::{Feeds, eval_once, interpret};
