#!/usr/bin/env bash
# The main job. Today `trainer fit` does not exist yet (it lands with the training-run issue):
# this builds trainer and validates configs/resnet.toml, printing its layer table (272,186
# parameters, output shapes, FLOPs per sample) and its graph as Graphviz DOT in runs/.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1; then
  echo "error: Rust is not installed: see https://rustup.rs, then run this again" >&2
  exit 2
fi
cargo build --release --locked
./target/release/trainer check configs/resnet.toml
mkdir -p runs
./target/release/trainer graph configs/resnet.toml > runs/resnet.dot
echo "graph written to runs/resnet.dot (render: dot -Tsvg runs/resnet.dot > runs/resnet.svg)"
./target/release/trainer plan configs/resnet.toml
./target/release/trainer bench configs/resnet.toml --steps 3
