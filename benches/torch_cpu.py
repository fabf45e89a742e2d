"""Our CPU training step against PyTorch's on the same model, batch, data shape and cores.

Runs `trainer bench CONFIG --json` and the same step in PyTorch (SGD with the config's
momentum/Nesterov/weight decay, or Adam), both as the median of N timed steps after warm-up,
and prints the ratio. Usage (needs `pip install torch --index-url https://download.pytorch.org/whl/cpu`):

    cargo build --release
    python3 benches/torch_cpu.py configs/resnet.toml [--steps 10] [--threads N] [--rounds 3]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import tomllib

import torch
import torch.nn as nn
import torch.nn.functional as F


class Basic(nn.Module):
    """The basic block of configs/resnet.toml: conv-bn-relu-conv-bn, projection shortcut when
    the shape changes, relu after the sum."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    def __init__(self, cin, widths, blocks, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        layers, c = [], widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks)):
            for j in range(n):
                layers.append(Basic(c, w, 2 if (i > 0 and j == 0) else 1))
                c = w
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        x = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def mlp(cin):
    return nn.Sequential(nn.Flatten(), nn.Linear(cin * 28 * 28, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))


MODELS = {
    "resnet.toml": (lambda: ResNet(1, [16, 32, 64], [3, 3, 3]), (1, 28, 28)),
    "resnet18.toml": (lambda: ResNet(3, [64, 128, 256, 512], [2, 2, 2, 2]), (3, 32, 32)),
    "mlp.toml": (lambda: mlp(1), (1, 28, 28)),
}


def load_config(path):
    """The config with `extends` applied (deep merge, as trainer does)."""
    with open(path, "rb") as f:
        cfg = tomllib.load(f)
    base = cfg.pop("extends", None)
    if base is None:
        return cfg
    merged = load_config(os.path.join(os.path.dirname(path), base))

    def merge(a, b):
        for k, v in b.items():
            a[k] = merge(a[k], v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
        return a

    return merge(merged, cfg)


def torch_step_ms(config, batch, steps, threads):
    torch.set_num_threads(threads)
    make, shape = MODELS[os.path.basename(config)]
    model = make()
    opt_cfg = load_config(config)["optimizer"]
    if opt_cfg["kind"] == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=opt_cfg["lr"], momentum=opt_cfg.get("momentum", 0),
                              nesterov=opt_cfg.get("nesterov", False), weight_decay=opt_cfg.get("weight_decay", 0))
    else:
        opt = torch.optim.Adam(model.parameters(), lr=opt_cfg["lr"])
    x = torch.rand(batch, *shape) * 2 - 1
    y = torch.randint(0, 10, (batch,))

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    for _ in range(2):
        step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--rounds", type=int, default=3,
                    help="alternate trainer and torch this many times; report each one's median")
    ap.add_argument("--trainer", default="target/release/trainer")
    args = ap.parse_args()
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    # Shared machines drift over seconds: alternating the two and taking medians over rounds
    # keeps a slow moment from landing on one side only.
    ours_ms, theirs_ms = [], []
    for _ in range(args.rounds):
        out = subprocess.run([args.trainer, "bench", args.config, "--device", "cpu", "--steps", str(args.steps), "--json"],
                             env=env, check=True, capture_output=True, text=True).stdout
        ours = json.loads(out)
        ours_ms.append(ours["step_ms"])
        theirs_ms.append(torch_step_ms(args.config, ours["batch"], args.steps, args.threads))
    mine, theirs = statistics.median(ours_ms), statistics.median(theirs_ms)
    batch = ours["batch"]
    print(f"{args.config} batch {batch}, {args.threads} threads, median of {args.steps} steps, "
          f"median of {args.rounds} alternating rounds")
    print(f"  trainer  {mine:9.1f} ms/step  {batch / mine * 1e3:8.0f} img/s  (rounds: {', '.join(f'{t:.1f}' for t in ours_ms)})")
    print(f"  torch {torch.__version__:<8} {theirs:6.1f} ms/step  {batch / theirs * 1e3:8.0f} img/s  (rounds: {', '.join(f'{t:.1f}' for t in theirs_ms)})")
    print(f"  ratio trainer/torch step time: {mine / theirs:.2f} (below 1: trainer is faster)")


if __name__ == "__main__":
    sys.exit(main())
