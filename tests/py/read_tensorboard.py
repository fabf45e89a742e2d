"""Prints the scalars of a TensorBoard log directory as JSON, read by TensorBoard's own reader.

Usage: read_tensorboard.py LOGDIR  ->  {"tag": [[step, value], ...], ...}
Exit code 3 when the tensorboard module cannot be imported (the Rust test skips or fails).
"""
import json
import sys

try:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
except ImportError as e:
    print(f"cannot import tensorboard: {e}", file=sys.stderr)
    sys.exit(3)

# size_guidance 0 keeps every point (the default samples 10000 per tag).
acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0})
acc.Reload()
out = {tag: [[e.step, e.value] for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
print(json.dumps(out, sort_keys=True))
