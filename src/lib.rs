//! trainer: a declarative TOML config → a static dataflow graph → training.
//! See docs/ARCHITECTURE.md for the map of the code.
#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod diag;
pub mod graph;
pub mod nn;
pub mod ops;
