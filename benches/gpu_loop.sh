#!/bin/sh
# GPU-loop measurements (docs/performance.md, "GPU loop"): run on the GPU machine as
#   bash .gpu/on-gpu.sh sh benches/gpu_loop.sh
# T is the trainer to measure, O an older build to compare the fit loop against.
T=${T:-./.gpu/trainer}
O=${O:-./.gpu/trainer-old}
$T devices
echo "== submits: default budget vs one submit per step"
$T bench configs/resnet.toml --device gpu --steps 20 --json
TRAINER_GPU_SUBMIT_MS=inf $T bench configs/resnet.toml --device gpu --steps 20 --json
$T bench configs/resnet18.toml --device gpu --steps 5 --json
TRAINER_GPU_SUBMIT_MS=inf $T bench configs/resnet18.toml --device gpu --steps 5 --json
echo "== checkpointing on the GPU, resnet18 b128"
for p in none sqrt blocks; do echo "policy $p"; $T bench configs/resnet18.toml --device gpu --steps 5 --json --set train.checkpointing=$p; done
echo "policy budget 50%"; $T bench configs/resnet18.toml --device gpu --steps 5 --json --set 'train.checkpointing={ memory_budget = 302142848 }'
echo "== fit mlp 1 epoch: new (async readback) vs old (blocking read every step)"
for b in $T $O $T $O; do
  rm -rf /tmp/r; /usr/bin/time -f "wall %e s" $b fit configs/mlp.toml --device gpu --run-dir /tmp/r --set train.epochs=2 --set log.every_steps=50 2>&1 | tail -3
  tail -2 /tmp/r/metrics.csv
done
echo "== fit resnet 300 steps: new vs old"
for b in $T $O; do
  rm -rf /tmp/r; /usr/bin/time -f "wall %e s" timeout 200 $b fit configs/resnet.toml --device gpu --run-dir /tmp/r --set data.train_limit=38400 --set train.epochs=1 2>&1 | tail -3
  tail -2 /tmp/r/metrics.csv
done
