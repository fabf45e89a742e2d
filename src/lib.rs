//! trainer: a declarative TOML config → a static dataflow graph → training.
//! See docs/ARCHITECTURE.md for the map of the code.
#![deny(unsafe_code)]

pub mod autodiff;
pub mod backend;
pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod data;
pub mod diag;
pub mod gradcheck;
pub mod graph;
pub mod kernel;
pub mod nn;
pub mod ops;
pub mod output;
pub mod schedule;
pub mod tensor;
pub mod train;
pub mod training;
