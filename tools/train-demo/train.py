#!/usr/bin/env python3
"""Train the xq-demo Llama checkpoint (plain PyTorch, one GPU) and save it in Hugging Face format.

Usage: train.py DATA_DIR OUT_DIR [--max-steps 3000 | --budget-s 65] [--device cuda] [--tiny]

DATA_DIR is what prepare_data.py wrote (train.bin, val.bin, meta.json, tokenizer files).
OUT_DIR gets model.safetensors (bfloat16), config.json, generation_config.json, tokenizer.json,
tokenizer_config.json and training_log.json.

Data per batch: ~72 % plain rows (<|bos|> + a random crop of the packed training stream) and
~28 % passkey rows: <|bos|> + training prose with " The pass key is K. Remember it. K is the pass
key." inserted at a sentence boundary at a random depth + "\\nWhat is the pass key? The pass key is"
+ " K" + <|eos|> (K a random 5-digit key, sample length log-uniform in [96, seq], 30 % of them the
full row), the rest of the row filled with <|bos|> + plain text. Answer tokens get loss weight 5;
the logged loss is the plain mean token cross-entropy. Training runs for --max-steps steps (or a wall-clock
budget) with a cosine schedule over that length; the validation loss (held-out "val" split) is measured every
~--val-every-s seconds and the weights with the lowest validation loss are saved.
"""
import argparse
import json
import math
import os
import queue
import shutil
import threading
import time

import numpy as np
import torch
import torch.nn.functional as F

from xqmodel import DemoConfig, DemoLlama

P = argparse.ArgumentParser()
P.add_argument("data_dir")
P.add_argument("out_dir")
P.add_argument("--budget-s", type=float, default=65.0)
P.add_argument("--device", default="cuda")
P.add_argument("--batch", type=int, default=32)
P.add_argument("--seq", type=int, default=2048)
P.add_argument("--lr", type=float, default=2.5e-3)
P.add_argument("--warmup", type=int, default=200)
P.add_argument("--seed", type=int, default=4242)
P.add_argument("--passkey-fraction", type=float, default=0.28)
P.add_argument("--max-steps", type=int, default=0, help="schedule by steps instead of wall time (reproducible length)")
P.add_argument("--val-every-s", type=float, default=15.0)
P.add_argument("--tiny", action="store_true", help="CPU smoke test: tiny model, few steps")
args = P.parse_args()

torch.manual_seed(args.seed)
rng = np.random.default_rng(args.seed)
meta = json.load(open(os.path.join(args.data_dir, "meta.json")))
train = np.fromfile(os.path.join(args.data_dir, "train.bin"), dtype=np.uint16).astype(np.int32)
val = np.fromfile(os.path.join(args.data_dir, "val.bin"), dtype=np.uint16).astype(np.int64)
V = meta["vocab_size"]
ends_sentence = np.zeros(V, bool)
ends_sentence[meta["ends_sentence"]] = True
starts_word = np.zeros(V, bool)
starts_word[meta["starts_word"]] = True
needle_a, needle_b, needle_c = (np.array(meta["pieces"][k], np.int32) for k in ("needle_a", "needle_b", "needle_c"))
question = np.array(meta["pieces"]["question"], np.int32)
key_ids = [np.array(k, np.int32) for k in meta["key_ids"]]
S, B = args.seq, args.batch
ANSWER_WEIGHT = 5.0


def plain(n):
    """n tokens of the packed stream from a random offset."""
    s = int(rng.integers(0, len(train) - n))
    return train[s : s + n]


def prose(n):
    """n tokens of training prose without document separators."""
    s = int(rng.integers(0, len(train) - 2 * n - 64))
    chunk = train[s : s + 2 * n + 64]
    chunk = chunk[chunk > 1]
    return chunk[:n]


def passkey_row():
    """(tokens[S+1], weights[S], answer_mask[S]) for one row that starts with a passkey sample."""
    key = key_ids[int(rng.integers(0, len(key_ids)))]
    needle = np.concatenate([needle_a, key, needle_b, key, needle_c])
    overhead = 1 + len(needle) + len(question) + len(key) + 1
    if rng.random() < 0.3:
        total = S + 1
    else:
        total = int(math.exp(rng.uniform(math.log(96), math.log(S + 1))))
    n_prose = max(total - overhead, 8)
    text = prose(n_prose)
    cand = np.nonzero(ends_sentence[text[:-1]] & starts_word[text[1:]])[0] + 1
    target = int(rng.uniform(0, 1) * len(text))
    pos = int(cand[np.argmin(np.abs(cand - target))]) if len(cand) else target
    sample = np.concatenate([[0], text[:pos], needle, text[pos:], question, key, [1]]).astype(np.int32)
    answer_start = len(sample) - 1 - len(key)
    if len(sample) < S + 1:
        sample = np.concatenate([sample, [0], plain(S + 1 - len(sample) - 1)])
    sample = sample[: S + 1]
    w = np.ones(S, np.float32)
    am = np.zeros(S, bool)
    # target index i predicts sample[i+1]; answer tokens are sample[answer_start : answer_start+len(key)]
    lo, hi = answer_start - 1, min(answer_start - 1 + len(key), S)
    if lo < S:
        w[lo:hi] = ANSWER_WEIGHT
        am[lo:hi] = True
    return sample, w, am


def batch():
    toks = np.empty((B, S + 1), np.int64)
    w = np.ones((B, S), np.float32)
    am = np.zeros((B, S), bool)
    for i in range(B):
        if rng.random() < args.passkey_fraction:
            t, wi, ai = passkey_row()
            toks[i], w[i], am[i] = t, wi, ai
        else:
            toks[i, 0] = 0
            toks[i, 1:] = plain(S)
    t = torch.from_numpy(toks)
    return t[:, :-1], t[:, 1:], torch.from_numpy(w), torch.from_numpy(am)


dev = torch.device(args.device)
cfg = DemoConfig(max_position_embeddings=max(2048, S))
if args.tiny:
    cfg = DemoConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, head_dim=32)
model = DemoLlama(cfg).to(dev)
n_params = sum(p.numel() for p in model.parameters())
print(f"params {n_params:,}  train tokens {len(train):,}  val tokens {len(val):,}", flush=True)

decay = [p for p in model.parameters() if p.dim() == 2]
no_decay = [p for p in model.parameters() if p.dim() < 2]
opt = torch.optim.AdamW(
    [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
    lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=dev.type == "cuda",
)
use_cuda = dev.type == "cuda"
if use_cuda:
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
step_model = torch.compile(model) if use_cuda else model


def train_step(x, y, w, am):
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_cuda):
        logits = step_model(x)
    ce = F.cross_entropy(logits.float().view(-1, V), y.reshape(-1), reduction="none").view(y.shape)
    loss = (ce * w).sum() / w.sum()
    loss.backward()
    return ce.detach(), loss.detach()


# validation windows: <|bos|> + (S-1) consecutive val tokens
val_windows = []
for i in range(len(val) // (S - 1) if not args.tiny else 2):
    val_windows.append(np.concatenate([[0], val[i * (S - 1) : (i + 1) * (S - 1)]]))
val_t = torch.tensor(np.stack(val_windows), dtype=torch.long)


@torch.no_grad()
def val_loss():
    model.eval()
    tot, n = 0.0, 0
    for i in range(0, len(val_t), 16):
        x = val_t[i : i + 16].to(dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_cuda):
            logits = model(x[:, :-1])
        ce = F.cross_entropy(logits.float().reshape(-1, V), x[:, 1:].reshape(-1), reduction="sum")
        tot += ce.item()
        n += x[:, 1:].numel()
    model.train()
    return tot / n


q = queue.Queue(maxsize=16)
stop = threading.Event()


def producer():
    while not stop.is_set():
        b = batch()
        if use_cuda:
            b = tuple(t.pin_memory() for t in b)
        while not stop.is_set():
            try:
                q.put(b, timeout=0.5)
                break
            except queue.Full:
                pass


threads = [threading.Thread(target=producer, daemon=True) for _ in range(3)]
for th in threads:
    th.start()

log = []
best = {"val_loss": float("inf")}
t_start = time.time()
t_train0 = None
step = 0
acc = {"loss": 0.0, "n": 0, "ans": 0.0, "nans": 0, "gn": 0.0}
next_val = args.val_every_s
budget = args.budget_s if not args.tiny else 8.0
peak, floor = args.lr, 0.1 * args.lr
lr = 0.0
while True:
    elapsed = 0.0 if t_train0 is None else time.time() - t_train0
    if (args.max_steps and step >= args.max_steps) or (not args.max_steps and elapsed >= budget):
        break
    frac = step / args.max_steps if args.max_steps else min(elapsed / budget, 1.0)
    lr = peak * min(1.0, (step + 1) / args.warmup) if step < args.warmup else floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * frac))
    for g in opt.param_groups:
        g["lr"] = lr
    x, y, w, am = (t.to(dev, non_blocking=True) for t in q.get())
    ce, _ = train_step(x, y, w, am)
    gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    step += 1
    acc["loss"] += ce.mean()
    acc["n"] += 1
    acc["ans"] += (ce * am).sum()
    acc["nans"] += am.sum()
    acc["gn"] += gn
    if t_train0 is None:
        torch.cuda.synchronize() if use_cuda else None
        t_train0 = time.time()
        compile_s = t_train0 - t_start
        print(f"compile + first step {compile_s:.1f}s", flush=True)
    if step % 100 == 0 or (args.tiny and step % 5 == 0):
        rec = {
            "step": step,
            "tokens": step * B * S,
            "loss": float(acc["loss"] / acc["n"]),
            "answer_ce": float(acc["ans"] / max(acc["nans"], 1)),
            "grad_norm": float(acc["gn"] / acc["n"]),
            "lr": lr,
            "elapsed_s": round(time.time() - t_train0, 1),
        }
        acc = {"loss": 0.0, "n": 0, "ans": 0.0, "nans": 0, "gn": 0.0}
        if rec["elapsed_s"] >= next_val:
            next_val += args.val_every_s
            rec["val_loss"] = val_loss()
            if rec["val_loss"] < best["val_loss"]:
                best = {"val_loss": rec["val_loss"], "step": step,
                        "state": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}}
        log.append(rec)
        print(json.dumps(rec), flush=True)

train_s = time.time() - t_train0
stop.set()
final_val = val_loss()
if final_val < best["val_loss"]:
    best = {"val_loss": final_val, "step": step, "state": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}}
print(f"done: {step} steps, {train_s:.1f}s, final val loss {final_val:.4f}, best {best['val_loss']:.4f} at step {best['step']}", flush=True)

# ---- save in Hugging Face Llama format ----
os.makedirs(args.out_dir, exist_ok=True)
from safetensors.torch import save_file  # noqa: E402

state = {k: v.to(torch.bfloat16).contiguous() for k, v in best["state"].items()}
save_file(state, os.path.join(args.out_dir, "model.safetensors"), metadata={"format": "pt"})
config = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "pad_token_id": None,
    "head_dim": cfg.head_dim,
    "hidden_act": "silu",
    "hidden_size": cfg.hidden_size,
    "initializer_range": cfg.initializer_range,
    "intermediate_size": cfg.intermediate_size,
    "max_position_embeddings": cfg.max_position_embeddings,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": cfg.num_attention_heads,
    "num_hidden_layers": cfg.num_hidden_layers,
    "num_key_value_heads": cfg.num_key_value_heads,
    "pretraining_tp": 1,
    "rms_norm_eps": cfg.rms_norm_eps,
    "rope_parameters": {"rope_theta": cfg.rope_theta, "rope_type": "default"},
    "rope_theta": cfg.rope_theta,
    "tie_word_embeddings": False,
    "use_cache": True,
    "vocab_size": cfg.vocab_size,
    "dtype": "bfloat16",
    "torch_dtype": "bfloat16",
}
json.dump(config, open(os.path.join(args.out_dir, "config.json"), "w"), indent=2)
json.dump({"bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1, "do_sample": False},
          open(os.path.join(args.out_dir, "generation_config.json"), "w"), indent=2)
for name in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(os.path.join(args.data_dir, name), os.path.join(args.out_dir, name))
json.dump(
    {
        "model": "xq-demo",
        "params": n_params,
        "steps": step,
        "tokens_seen": step * B * S,
        "train_wall_s": round(train_s, 1),
        "compile_and_first_step_s": round(compile_s, 1),
        "device": torch.cuda.get_device_name() if use_cuda else "cpu",
        "torch": torch.__version__,
        "batch": [B, S],
        "peak_lr": peak,
        "warmup_steps": args.warmup,
        "schedule": f"linear warmup, cosine (by {'steps' if args.max_steps else 'wall time'}) to 0.1x",
        "max_steps": args.max_steps or None,
        "budget_s": None if args.max_steps else budget,
        "optimizer": "AdamW(0.9,0.95) eps 1e-8, wd 0.1 on matrices, clip 1.0, bf16 autocast, fp32 master",
        "passkey_fraction": args.passkey_fraction,
        "answer_token_loss_weight": ANSWER_WEIGHT,
        "seed": args.seed,
        "train_tokens_unique": int(len(train)),
        "epochs": round(step * B * S / len(train), 2),
        "selected": {"step": best["step"], "val_loss": best["val_loss"], "rule": f"lowest val loss (checked every ~{args.val_every_s:g} s and at the end)"},
        "final_val_loss": final_val,
        "log": log,
    },
    open(os.path.join(args.out_dir, "training_log.json"), "w"),
    indent=1,
)
print("saved", sorted(os.listdir(args.out_dir)), flush=True)
