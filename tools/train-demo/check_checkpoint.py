#!/usr/bin/env python3
"""Independent CPU check of a saved xq-demo checkpoint (numpy only; no torch, no transformers).

Usage: check_checkpoint.py MODEL_DIR [GREEDY_TOKENS]

1. Parses model.safetensors by hand and checks every tensor's name, dtype and shape against
   config.json (Llama layout, GQA, untied lm_head), and that the values are finite.
2. Runs a float32 NumPy forward pass (no KV cache) on the prompts in MODEL_DIR/reference.json and
   compares the last-position logits and the first GREEDY_TOKENS greedy ids (default 8) with the
   ones transformers produced on the GPU.
Exits 1 on any mismatch.
"""
import json
import os
import struct
import sys

import numpy as np

model_dir = sys.argv[1]
n_greedy = int(sys.argv[2]) if len(sys.argv) > 2 else 8
cfg = json.load(open(os.path.join(model_dir, "config.json")))
path = os.path.join(model_dir, "model.safetensors")
raw = open(path, "rb").read()
(hlen,) = struct.unpack("<Q", raw[:8])
header = json.loads(raw[8 : 8 + hlen])
header.pop("__metadata__", None)
base = 8 + hlen

H, L, V, I = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"], cfg["intermediate_size"]
NH, KVH, D = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
expected = {"model.embed_tokens.weight": [V, H], "model.norm.weight": [H], "lm_head.weight": [V, H]}
for l in range(L):
    p = f"model.layers.{l}."
    expected.update({
        p + "self_attn.q_proj.weight": [NH * D, H], p + "self_attn.k_proj.weight": [KVH * D, H],
        p + "self_attn.v_proj.weight": [KVH * D, H], p + "self_attn.o_proj.weight": [H, NH * D],
        p + "mlp.gate_proj.weight": [I, H], p + "mlp.up_proj.weight": [I, H], p + "mlp.down_proj.weight": [H, I],
        p + "input_layernorm.weight": [H], p + "post_attention_layernorm.weight": [H],
    })
errors = []
if set(header) != set(expected):
    errors.append(f"tensor names differ: missing {sorted(set(expected) - set(header))}, extra {sorted(set(header) - set(expected))}")
want_dtype = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}[cfg["torch_dtype"]]
W = {}
n_params = 0
for name, info in header.items():
    if info["dtype"] != want_dtype:
        errors.append(f"{name}: dtype {info['dtype']}, expected {want_dtype}")
    if name in expected and info["shape"] != expected[name]:
        errors.append(f"{name}: shape {info['shape']}, expected {expected[name]}")
    a, b = info["data_offsets"]
    buf = np.frombuffer(raw[base + a : base + b], dtype="<u2" if want_dtype != "F32" else "<f4")
    if want_dtype == "BF16":
        arr = (buf.astype(np.uint32) << 16).view(np.float32)
    elif want_dtype == "F16":
        arr = buf.view(np.float16).astype(np.float32)
    else:
        arr = buf.astype(np.float32)
    arr = arr.reshape(info["shape"])
    if not np.isfinite(arr).all():
        errors.append(f"{name}: non-finite values")
    W[name] = arr
    n_params += arr.size
print(f"{len(header)} tensors, {n_params:,} parameters, dtype {want_dtype}, file {os.path.getsize(path):,} bytes")


def rms(x, w):
    return w * (x / np.sqrt((x * x).mean(-1, keepdims=True) + cfg["rms_norm_eps"]))


def forward(ids):
    t = len(ids)
    x = W["model.embed_tokens.weight"][ids]
    inv = 1.0 / (cfg["rope_theta"] ** (np.arange(0, D, 2, dtype=np.float32) / D))
    ang = np.outer(np.arange(t, dtype=np.float32), inv)
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))

    def rope(v):  # [heads, t, D]
        v1, v2 = v[..., : D // 2], v[..., D // 2 :]
        return v * cos + np.concatenate([-v2, v1], -1) * sin

    mask = np.triu(np.full((t, t), -np.inf, dtype=np.float32), 1)
    for l in range(L):
        p = f"model.layers.{l}."
        h = rms(x, W[p + "input_layernorm.weight"])
        q = rope((h @ W[p + "self_attn.q_proj.weight"].T).reshape(t, NH, D).transpose(1, 0, 2))
        k = rope((h @ W[p + "self_attn.k_proj.weight"].T).reshape(t, KVH, D).transpose(1, 0, 2))
        v = (h @ W[p + "self_attn.v_proj.weight"].T).reshape(t, KVH, D).transpose(1, 0, 2)
        k, v = np.repeat(k, NH // KVH, 0), np.repeat(v, NH // KVH, 0)
        s = q @ k.transpose(0, 2, 1) / np.sqrt(D) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        o = (s @ v).transpose(1, 0, 2).reshape(t, NH * D)
        x = x + o @ W[p + "self_attn.o_proj.weight"].T
        h = rms(x, W[p + "post_attention_layernorm.weight"])
        g = h @ W[p + "mlp.gate_proj.weight"].T
        x = x + ((g / (1 + np.exp(-g))) * (h @ W[p + "mlp.up_proj.weight"].T)) @ W[p + "mlp.down_proj.weight"].T
    return rms(x, W["model.norm.weight"]) @ W["lm_head.weight"].T


ref_path = os.path.join(model_dir, "reference.json")
if os.path.exists(ref_path) and not errors:
    ref = json.load(open(ref_path))
    for p in ref["prompts"]:
        ids = list(p["input_ids"])
        logits = forward(ids)[-1]
        d = float(np.abs(logits - np.array(p["logits_last"], np.float32)).max())
        gen = []
        for _ in range(n_greedy):
            nxt = int(forward(ids)[-1].argmax())
            gen.append(nxt)
            ids.append(nxt)
        ok_ids = gen == p["greedy_ids"][:n_greedy]
        print(f"{p['name']}: max |logit - reference| {d:.2e}, greedy {n_greedy} ids {'match' if ok_ids else 'DIFFER'}")
        if d > 2e-3 * max(1.0, float(np.abs(logits).max())):
            errors.append(f"{p['name']}: logits differ from reference by {d}")
        if not ok_ids:
            errors.append(f"{p['name']}: greedy ids {gen} vs reference {p['greedy_ids'][:n_greedy]}")
for e in errors:
    print("ERROR", e)
print("OK" if not errors else f"{len(errors)} errors")
sys.exit(1 if errors else 0)
