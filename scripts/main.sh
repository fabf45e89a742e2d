#!/usr/bin/env bash
# The main job: trains configs/resnet.toml (ResNet-20 on the shipped Fashion-MNIST) with
# `trainer fit`, on the GPU where one opens, else on the CPU. The run directory
# (runs/resnet20-fashion/<time>/) gets metrics.csv, TensorBoard events and checkpoints;
# Ctrl-C saves a checkpoint and `trainer resume <run dir>` continues it. Extra arguments go to
# `trainer fit` (e.g. --device cpu, --set train.epochs=1).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1; then
  echo "error: Rust is not installed: see https://rustup.rs, then run this again" >&2
  exit 2
fi
cargo build --release --locked
exec ./target/release/trainer fit configs/resnet.toml "$@"
