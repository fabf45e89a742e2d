#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian/Ubuntu or macOS machine, installing what the
# tests need first: Graphviz (the tests render `trainer graph` output with `dot`), on
# Linux Mesa's software Vulkan driver (lavapipe), so the GPU kernels run even with no GPU,
# and a Python venv with TensorBoard (target/py) whose reader checks our event files.
set -euo pipefail
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null 2>&1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif need sudo; then sudo "$@"; else "$@"; fi; }

vulkan_driver() { ls /usr/share/vulkan/icd.d/*.json >/dev/null 2>&1; }
if ! need dot || { [ "$(uname)" = Linux ] && ! vulkan_driver; }; then
  if need apt-get; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq graphviz mesa-vulkan-drivers libvulkan1
  elif need brew; then
    brew install graphviz
  else
    echo "warning: install Graphviz (dot) by hand; the graph rendering test needs it" >&2
  fi
fi
if ! need cargo; then
  echo "error: Rust is not installed: see https://rustup.rs, then run this again" >&2
  exit 2
fi

# A Python venv with TensorBoard (its own reader checks our event files), safetensors and
# numpy, at target/py; reused when it already imports them.
py=target/py/bin/python
if ! "$py" -c 'import tensorboard, safetensors, numpy' >/dev/null 2>&1; then
  if { ! need python3 || ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; } && need apt-get; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
  fi
  rm -rf target/py
  python3 -m venv target/py
  "$py" -m pip install -q tensorboard safetensors numpy
fi
export TRAINER_PYTHON="$PWD/target/py/bin/python"

# Every kernel is built with naga's bounds checks, so an out-of-bounds index fails a test
# instead of corrupting memory silently (in normal runs kernels are unchecked, for speed).
export TRAINER_SHADER_CHECKS=1
cargo test --locked --all-targets

# examples/train.rs drives the library as an embedding program would: it changes a loaded
# config in code, trains 40 steps and prints each epoch's metrics, which are checked here.
run_dir="$(mktemp -d)"
example="$(cargo run --quiet --locked --example train -- configs/lenet.toml "$run_dir/run")"
rm -rf "$run_dir"
echo "$example"
if [ "$(grep -c 'val accuracy' <<<"$example")" != 2 ] || ! grep -q 'epoch 2 (step 40)' <<<"$example"; then
  echo "error: examples/train.rs did not report its two epochs" >&2
  exit 1
fi
echo "example: 1 passed, 0 failed"
