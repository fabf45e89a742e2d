"""PyTorch reference for our character GPT: nanoGPT's model.py design, trained with nanoGPT's
shakespeare-char settings on datasets/shakespeare, with the validation loss measured over the
very windows `trainer` validates on (src/data/text.rs, src/data/windows.rs).

Data, as ours:
- text: the gzip (or plain) file, or a folder's files in sorted name order (hidden files and
  SHA256SUMS aside), checked against the SHA256SUMS beside it when it lists the name (without
  `.gz`);
- vocabulary: sorted(set(text)) of the WHOLE text, ids in that order (nanoGPT's prepare.py);
- split: the first floor(n * (1 - val_split)) tokens train (f64 arithmetic, as ours), the rest
  is the held-out tail;
- validation: the tail's side-by-side windows in order, window i = tokens[s : s + T + 1] with
  s = n_train + i*T, x = w[:T], y = w[1:]; (n - n_train - 1) // T of them, capped by
  --val-limit; the loss is the mean cross-entropy over all B*T positions of those windows;
- training: B windows at uniform random offsets in [0, n_train - T) a step (nanoGPT's
  get_batch: torch.randint(len(train) - T)); the order differs from ours, the distribution not.

Model and optimisation (nanoGPT, GPTConfig(bias=True)): learned token and position embeddings,
pre-norm blocks (LayerNorm eps 1e-5 with bias; causal self-attention through
F.scaled_dot_product_attention(is_causal=True); MLP 4x with exact GELU), final LayerNorm,
lm_head tied to wte; init normal(0, 0.02), zero biases, c_proj.weight normal(0, 0.02/sqrt(2L)).
AdamW (betas 0.9/0.99, eps 1e-8, weight decay 0.1 on params of dim >= 2 only, not fused),
nanoGPT's get_lr (warmup lr*(it+1)/(W+1), cosine to min_lr at --steps), grad-norm clip 1.0.
fp32 with TF32 off.

Usage (pip install torch numpy safetensors):

    python3 benches/torch_gpt.py                      # 5000 steps of shakespeare-char, cuda if present
    python3 benches/torch_gpt.py --bench 50           # median ms/step over 50 steps after 10 warm-up
    python3 benches/torch_gpt.py --load runs/X/checkpoints/step-000005000/model.safetensors
    python3 benches/torch_gpt.py --tiny --steps 200   # CPU smoke run: 2 layers, 2 heads, 64 wide,
                                                      # block 32, batch 8

Output lines (greppable):
    data N chars vocab V train_tokens A val_tokens B val_windows W block T
    params N
    step K train_loss X val_loss Y lr Z     (train_loss: mean training-batch loss, dropout on,
                                              over the steps since the last report; lr: the LR of
                                              step K's last optimizer step; step 0: before training)
    final val_loss X
    ms_per_step median X mean Y             (training steps only, evaluation excluded)
    bench steps N ms_per_step median X tokens_per_s Y
    load_state_dict: <All keys matched successfully>
    load val_loss X windows W
"""
import argparse
import gzip
import hashlib
import math
import os
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATA = os.path.join(HERE, "..", "datasets", "shakespeare", "shakespeare.txt.gz")


# ----------------------------------------------------------------------------------------------
# Data: as src/data/text.rs and src/data/windows.rs.


def _read_sums(folder):
    sums = {}
    p = os.path.join(folder, "SHA256SUMS")
    if os.path.isfile(p):
        with open(p) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2:
                    sums[parts[-1].lstrip("*")] = parts[0].lower()
    return sums


def read_text(path):
    """The text at `path` (a file, or a folder's files in sorted name order), gunzipped where
    the magic bytes say so, each file checked against its folder's SHA256SUMS."""
    if os.path.isdir(path):
        names = sorted(
            n for n in os.listdir(path)
            if not n.startswith(".") and n != "SHA256SUMS" and os.path.isfile(os.path.join(path, n))
        )
        files = [os.path.join(path, n) for n in names]
    else:
        files = [path]
    out = []
    for f in files:
        with open(f, "rb") as fh:
            raw = fh.read()
        data = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
        name = os.path.basename(f)
        key = name[:-3] if name.endswith(".gz") else name
        want = _read_sums(os.path.dirname(os.path.abspath(f))).get(key)
        if want is not None:
            got = hashlib.sha256(data).hexdigest()
            if got != want:
                sys.exit(f"{f}: checksum mismatch: SHA256SUMS says {want}, the data is {got}")
        out.append(data)
    return b"".join(out).decode("utf-8")


def tokenize(text):
    """Ids in sorted(set(text)) order, as int64 numpy array, and the vocabulary."""
    chars = sorted(set(text))
    if text.isascii():
        lut = np.zeros(128, dtype=np.int64)
        for i, c in enumerate(chars):
            lut[ord(c)] = i
        ids = lut[np.frombuffer(text.encode("ascii"), dtype=np.uint8)]
    else:
        stoi = {c: i for i, c in enumerate(chars)}
        ids = np.fromiter((stoi[c] for c in text), dtype=np.int64, count=len(text))
    return ids, chars


class Data:
    def __init__(self, path, block, val_split, val_limit, device):
        text = read_text(path)
        ids, self.chars = tokenize(text)
        n = len(ids)
        # Rust: (n as f64 * (1.0 - val_frac)).floor() as usize, same IEEE arithmetic here.
        n_train = int(math.floor(float(n) * (1.0 - val_split)))
        if n_train < block + 1 or n - n_train < block + 1:
            sys.exit(f"the text ({n} chars) has fewer than block_size + 1 = {block + 1} tokens in a split")
        n_val_windows = (n - n_train - 1) // block
        if val_limit is not None:
            n_val_windows = min(n_val_windows, val_limit)
        self.n, self.n_train, self.block = n, n_train, block
        self.vocab_size = len(self.chars)
        self.n_val_windows = n_val_windows
        self.device = device
        self.tokens = torch.from_numpy(ids).to(device)
        self.train = self.tokens[:n_train]
        # Validation window i: tokens[n_train + i*T : n_train + i*T + T + 1].
        starts = n_train + block * torch.arange(n_val_windows, device=device)
        w = self.tokens[starts[:, None] + torch.arange(block + 1, device=device)[None, :]]
        self.val_x, self.val_y = w[:, :block].contiguous(), w[:, 1:].contiguous()
        self.offsets = torch.arange(block + 1, device=device)

    def describe(self):
        return (
            f"data {self.n} chars vocab {self.vocab_size} train_tokens {self.n_train} "
            f"val_tokens {self.n - self.n_train} val_windows {self.n_val_windows} block {self.block}"
        )

    def get_batch(self, batch):
        """nanoGPT's get_batch: B offsets uniform in [0, n_train - T) from the global CPU RNG."""
        ix = torch.randint(self.n_train - self.block, (batch,)).to(self.device)
        w = self.train[ix[:, None] + self.offsets[None, :]]
        return w[:, :-1], w[:, 1:]


# ----------------------------------------------------------------------------------------------
# Model: nanoGPT's model.py (bias=True), state_dict names identical.


class LayerNorm(nn.Module):
    def __init__(self, ndim, bias=True):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd, n_head, dropout, bias=True):
        super().__init__()
        assert n_embd % n_head == 0, "n_embd must be a multiple of n_head"
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)
        self.n_head, self.n_embd, self.dropout = n_head, n_embd, dropout

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=None, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, n_embd, dropout, bias=True):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.gelu = nn.GELU()  # exact (erf)
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, n_embd, n_head, dropout, bias=True):
        super().__init__()
        self.ln_1 = LayerNorm(n_embd, bias)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout, bias)
        self.ln_2 = LayerNorm(n_embd, bias)
        self.mlp = MLP(n_embd, dropout, bias)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, vocab_size, block_size, n_layer, n_head, n_embd, dropout, bias=True):
        super().__init__()
        self.block_size = block_size
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab_size, n_embd),
            wpe=nn.Embedding(block_size, n_embd),
            drop=nn.Dropout(dropout),
            h=nn.ModuleList([Block(n_embd, n_head, dropout, bias) for _ in range(n_layer)]),
            ln_f=LayerNorm(n_embd, bias),
        ))
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        for pn, p in self.named_parameters():
            if pn.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())  # the tied matrix counted once

    def forward(self, idx, targets=None):
        b, t = idx.size()
        assert t <= self.block_size, f"sequence of {t} > block_size {self.block_size}"
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    def configure_optimizer(self, weight_decay, lr, betas):
        params = {pn: p for pn, p in self.named_parameters() if p.requires_grad}
        decay = [p for p in params.values() if p.dim() >= 2]
        nodecay = [p for p in params.values() if p.dim() < 2]
        groups = [
            {"params": decay, "weight_decay": weight_decay},
            {"params": nodecay, "weight_decay": 0.0},
        ]
        print(
            f"optimizer adamw decayed_tensors {len(decay)} decayed_params {sum(p.numel() for p in decay)} "
            f"nodecay_tensors {len(nodecay)} nodecay_params {sum(p.numel() for p in nodecay)}"
        )
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=1e-8, fused=False)


def get_lr(it, lr, min_lr, warmup, decay_iters):
    """nanoGPT's get_lr, exactly."""
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    if it > decay_iters:
        return min_lr
    decay_ratio = (it - warmup) / (decay_iters - warmup)
    assert 0 <= decay_ratio <= 1
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return min_lr + coeff * (lr - min_lr)


@torch.no_grad()
def evaluate(model, data, batch):
    """Mean cross-entropy over every position of the validation windows, in model.eval()."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, data.n_val_windows, batch):
        x, y = data.val_x[i:i + batch], data.val_y[i:i + batch]
        logits, _ = model(x)
        total += F.cross_entropy(
            logits.view(-1, logits.size(-1)), y.reshape(-1), reduction="sum"
        ).double().item()
        count += y.numel()
    model.train(was_training)
    return total / count


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------------------------


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=DEFAULT_DATA, help="text file or folder (default: the shipped Shakespeare)")
    ap.add_argument("--steps", type=int, default=5000, help="optimizer steps (default 5000)")
    ap.add_argument("--decay-steps", type=int, default=None, help="cosine end, nanoGPT's lr_decay_iters (default: --steps)")
    ap.add_argument("--batch", type=int, default=None, help="windows a step (default 64; --tiny 8)")
    ap.add_argument("--block", type=int, default=None, help="block_size T (default 256; --tiny 32; --load: wpe rows)")
    ap.add_argument("--layers", type=int, default=None, help="n_layer (default 6; --tiny 2)")
    ap.add_argument("--heads", type=int, default=None, help="n_head (default 6; --tiny 2)")
    ap.add_argument("--embd", type=int, default=None, help="n_embd (default 384; --tiny 64)")
    ap.add_argument("--dropout", type=float, default=0.2)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--min-lr", type=float, default=1e-4)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--grad-clip", type=float, default=1.0, help="0 turns clipping off")
    ap.add_argument("--val-split", type=float, default=0.1, help="held-out tail fraction (default 0.1)")
    ap.add_argument("--eval-every", type=int, default=250, help="steps between validation reports (default 250)")
    ap.add_argument("--val-limit", type=int, default=None, help="at most this many tail windows (default: all)")
    ap.add_argument("--eval-batch", type=int, default=None, help="windows a validation forward (default: --batch)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--device", default=None, help="cuda if available, else cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    ap.add_argument("--bench", type=int, default=None, metavar="N",
                    help="time N training steps after 10 warm-up steps, print the median, exit")
    ap.add_argument("--load", default=None, metavar="PATH",
                    help="our model.safetensors: load with strict=True, print the tail validation loss, exit")
    ap.add_argument("--save", default=None, metavar="PATH",
                    help="after training, write the model as safetensors (both tied names, as ours)")
    ap.add_argument("--tiny", action="store_true",
                    help="CPU smoke configuration: 2 layers, 2 heads, 64 wide, block 32, batch 8")
    args = ap.parse_args()
    small = dict(batch=8, block=32, layers=2, heads=2, embd=64)
    full = dict(batch=64, block=256, layers=6, heads=6, embd=384)
    for k, v in (small if args.tiny else full).items():
        if getattr(args, k) is None and not (k in ("block", "layers", "embd") and args.load):
            setattr(args, k, v)
    if args.eval_batch is None:
        args.eval_batch = args.batch
    if args.decay_steps is None:
        args.decay_steps = args.steps
    return args


def main():
    args = parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(args.seed)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu threads {torch.get_num_threads()}"
    print(f"torch {torch.__version__} device {device} ({where}) tf32 off")

    if args.load:
        return load_and_eval(args, device)

    data = Data(args.data, args.block, args.val_split, args.val_limit, device)
    print(data.describe())
    model = GPT(data.vocab_size, args.block, args.layers, args.heads, args.embd, args.dropout).to(device)
    print(f"config layers {args.layers} heads {args.heads} embd {args.embd} block {args.block} "
          f"batch {args.batch} dropout {args.dropout} lr {args.lr} min_lr {args.min_lr} "
          f"warmup {args.warmup} decay_steps {args.decay_steps} weight_decay {args.weight_decay} "
          f"grad_clip {args.grad_clip} seed {args.seed}")
    print(f"params {model.num_params()}")
    opt = model.configure_optimizer(args.weight_decay, args.lr, (0.9, 0.99))

    def train_step(it):
        lr = get_lr(it, args.lr, args.min_lr, args.warmup, args.decay_steps)
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = data.get_batch(args.batch)
        _, loss = model(x, y)
        loss.backward()
        if args.grad_clip != 0.0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach(), lr

    model.train()
    if args.bench is not None:
        for it in range(10):
            train_step(it)
        sync(device)
        times = []
        for it in range(10, 10 + args.bench):
            t0 = time.perf_counter()
            train_step(it)
            sync(device)
            times.append(time.perf_counter() - t0)
        med = statistics.median(times) * 1e3
        print(f"bench steps {args.bench} ms_per_step median {med:.3f} mean {statistics.mean(times) * 1e3:.3f} "
              f"min {min(times) * 1e3:.3f} tokens_per_s {args.batch * args.block / (med / 1e3):.0f}")
        return

    val = evaluate(model, data, args.eval_batch)
    print(f"step 0 train_loss nan val_loss {val:.4f} lr {get_lr(0, args.lr, args.min_lr, args.warmup, args.decay_steps):.6f}", flush=True)
    times, since, lr = [], [], 0.0
    for it in range(args.steps):
        t0 = time.perf_counter()
        loss, lr = train_step(it)
        sync(device)
        times.append(time.perf_counter() - t0)
        since.append(loss)
        step = it + 1
        if step % args.eval_every == 0 or step == args.steps:
            train_loss = torch.stack(since).mean().item()
            since = []
            val = evaluate(model, data, args.eval_batch)
            print(f"step {step} train_loss {train_loss:.4f} val_loss {val:.4f} lr {lr:.6f} "
                  f"ms_per_step {statistics.median(times[-args.eval_every:]) * 1e3:.2f}", flush=True)
    print(f"final val_loss {val:.4f}")
    print(f"ms_per_step median {statistics.median(times) * 1e3:.3f} mean {statistics.mean(times) * 1e3:.3f} "
          f"tokens_per_s {args.batch * args.block / statistics.median(times):.0f}")
    if args.save:
        from safetensors.torch import save_file
        sd = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
        save_file(sd, args.save)
        print(f"saved {args.save} tensors {len(sd)}")


def load_and_eval(args, device):
    from safetensors.torch import load_file
    sd = load_file(args.load)
    wte, wpe = sd.get("transformer.wte.weight"), sd.get("transformer.wpe.weight")
    if wte is None or wpe is None:
        sys.exit(f"{args.load}: no transformer.wte.weight / transformer.wpe.weight")
    layers = 1 + max((int(k.split(".")[2]) for k in sd if k.startswith("transformer.h.")), default=-1)
    embd, ctx = wte.shape[1], wpe.shape[0]
    for name, given, found in (("layers", args.layers, layers), ("embd", args.embd, embd)):
        if given is not None and given != found:
            sys.exit(f"--{name} {given}, but the checkpoint has {found}")
    block = args.block if args.block is not None else ctx
    if "lm_head.weight" in sd:
        same = torch.equal(sd["lm_head.weight"], wte)
        print(f"tied lm_head.weight == transformer.wte.weight: {same}")
    data = Data(args.data, block, args.val_split, args.val_limit, device)
    print(data.describe())
    if wte.shape[0] != data.vocab_size:
        sys.exit(f"the checkpoint's vocabulary has {wte.shape[0]} ids, the text's {data.vocab_size}")
    model = GPT(data.vocab_size, ctx, layers, args.heads, embd, args.dropout).to(device)
    print(f"config layers {layers} heads {args.heads} embd {embd} block_size {ctx} eval_block {block}")
    print("load_state_dict:", model.load_state_dict(sd, strict=True))
    val = evaluate(model, data, args.eval_batch)
    print(f"load val_loss {val:.4f} windows {data.n_val_windows}")


if __name__ == "__main__":
    main()
