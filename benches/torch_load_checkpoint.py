# On the GPU machine (which has PyTorch): python3 benches/torch_load_checkpoint.py MODEL.safetensors
# Loads our checkpoint into torch_reference.resnet20(1) with strict=True and measures its test
# accuracy in PyTorch, independently of trainer.
import gzip, sys
import numpy as np, torch
from safetensors.torch import load_file
sys.path.insert(0, ".gpu")  # torch_reference.py, copied there by shared/gpu/prepare.sh
from torch_reference import resnet20
m = resnet20(1)
sd = load_file(sys.argv[1])
print("load_state_dict:", m.load_state_dict(sd, strict=True))
def idx(p, off):
    return np.frombuffer(gzip.open(p).read(), np.uint8, offset=off)
x = idx("datasets/fashion-mnist/t10k-images-idx3-ubyte.gz", 16).reshape(-1, 1, 28, 28)
y = idx("datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz", 8)
x = torch.tensor(x, dtype=torch.float32) / 255.0
m.eval()
with torch.no_grad():
    pred = torch.cat([m(x[i:i + 500]).argmax(1) for i in range(0, len(x), 500)])
print("pytorch test accuracy: %.2f%%" % (100.0 * (pred.numpy() == y).mean()))
