"""Prints, as JSON, the LR that each optimizer step uses under PyTorch's schedulers, for the
cases src/train/schedule.rs's tests compare with (tests/data/torch_lr.json is its output).

Usage: python tests/py/torch_lr.py > tests/data/torch_lr.json   (needs torch)
"""
import json

import torch
from torch.optim.lr_scheduler import (
    CosineAnnealingLR,
    LinearLR,
    MultiStepLR,
    OneCycleLR,
    SequentialLR,
    StepLR,
)


def opt(lr):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr, momentum=0.9)


def per_step(o, sched, total):
    lrs = []
    for _ in range(total):
        lrs.append(o.param_groups[0]["lr"])
        o.step()
        sched.step()
    return lrs


def per_epoch(o, sched, spe, epochs):
    lrs = []
    for _ in range(epochs):
        for _ in range(spe):
            lrs.append(o.param_groups[0]["lr"])
            o.step()
        sched.step()
    return lrs


def warmup(o, w, main):
    return SequentialLR(o, [LinearLR(o, start_factor=1 / w, end_factor=1.0, total_iters=w - 1), main], milestones=[w])


cases = {}
o = opt(0.8)
cases["step"] = dict(lr=0.8, spe=10, total=100, lrs=per_epoch(o, StepLR(o, step_size=2, gamma=0.5), 10, 10))
o = opt(1.0)
cases["multistep"] = dict(lr=1.0, spe=4, total=40, lrs=per_epoch(o, MultiStepLR(o, milestones=[3, 5], gamma=0.1), 4, 10))
o = opt(0.1)
cases["cosine"] = dict(lr=0.1, spe=10, total=100, lrs=per_step(o, CosineAnnealingLR(o, T_max=100, eta_min=0.001), 100))
for total, pct, max_lr in [(100, 0.3, 0.1), (37, 0.25, 2.0), (1000, 0.45, 0.5)]:
    o = opt(max_lr / 2)
    s = OneCycleLR(o, max_lr=max_lr, total_steps=total, pct_start=pct)
    cases[f"onecycle_{total}"] = dict(lr=max_lr / 2, spe=10, total=total, max_lr=max_lr, pct_start=pct, lrs=per_step(o, s, total))
o = opt(0.1)
cases["warmup_cosine"] = dict(lr=0.1, spe=10, total=105, warmup_epochs=0.5,
                              lrs=per_step(o, warmup(o, 5, CosineAnnealingLR(o, T_max=100)), 105))
# An epoch-based StepLR after warmup, stepped per step: step_size = epochs × steps per epoch.
o = opt(1.0)
cases["warmup_step"] = dict(lr=1.0, spe=4, total=40, warmup_epochs=1.0,
                            lrs=per_step(o, warmup(o, 4, StepLR(o, step_size=4, gamma=0.1)), 40))
print(json.dumps({"torch": torch.__version__, "cases": cases}, indent=1))
