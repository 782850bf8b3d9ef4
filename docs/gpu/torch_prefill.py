"""fp16 prefill of the Llama-3.2-1B shape in plain PyTorch on the same GPU: what a user would otherwise run for a prompt.

16 layers, hidden 2048, 32 query / 8 KV heads of 64, intermediate 8192, vocabulary 128256 (tied embeddings), random
fp16 weights (std 0.02): RMSNorm, fused q/k/v, rotary embedding, causal F.scaled_dot_product_attention with the KV
heads repeated, SwiGLU, the output head on the last position. The work of a transformers forward of that model in fp16
with SDPA, without its Python overheads. Wall time of a whole prompt (CUDA-synchronised), median of 5 after 3 warm-ups.
Usage: python3 torch_prefill.py OUT.json [prompt tokens ...]   (default 512 4096)
"""
import json
import sys
import time

import torch
import torch.nn.functional as F

out_path = sys.argv[1]
lengths = [int(t) for t in sys.argv[2:]] or [512, 4096]
dev = 'cuda'
dt = torch.float16
H, LAYERS, NH, NKV, D, I, V = 2048, 16, 32, 8, 64, 8192, 128256
res = {'torch': torch.__version__, 'device': torch.cuda.get_device_name(), 'shape': 'llama-3.2-1b', 'rows': [], 'errors': []}

gen = torch.Generator(device=dev).manual_seed(0)


def weight(*shape):
    return torch.randn(*shape, device=dev, dtype=dt, generator=gen) * 0.02


ones = torch.ones(H, device=dev, dtype=dt)
layers = [
    {'qkv': weight((NH + 2 * NKV) * D, H), 'o': weight(H, NH * D), 'gu': weight(2 * I, H), 'down': weight(H, I)}
    for _ in range(LAYERS)
]
E = weight(V, H)
inv_freq = 1.0 / (500000.0 ** (torch.arange(0, D, 2, device=dev, dtype=torch.float32) / D))


def rms(x):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5)).to(dt) * ones


def rotate(x, cos, sin):
    a, b = x[..., : D // 2], x[..., D // 2 :]
    return torch.cat([a * cos - b * sin, b * cos + a * sin], -1)


@torch.inference_mode()
def prefill(ids):
    T = ids.shape[0]
    f = torch.outer(torch.arange(T, device=dev, dtype=torch.float32), inv_freq)
    cos, sin = f.cos().to(dt), f.sin().to(dt)
    x = E[ids]
    for p in layers:
        q, k, v = (rms(x) @ p['qkv'].T).split([NH * D, NKV * D, NKV * D], -1)
        q = rotate(q.view(T, NH, D).transpose(0, 1), cos, sin)
        k = rotate(k.view(T, NKV, D).transpose(0, 1), cos, sin)
        v = v.view(T, NKV, D).transpose(0, 1)
        rep = NH // NKV
        a = F.scaled_dot_product_attention(q[None], k.repeat_interleave(rep, 0)[None], v.repeat_interleave(rep, 0)[None], is_causal=True)[0]
        x = x + a.transpose(0, 1).reshape(T, NH * D) @ p['o'].T
        g, u = (rms(x) @ p['gu'].T).split([I, I], -1)
        x = x + (F.silu(g) * u) @ p['down'].T
    return rms(x[-1:]) @ E.T


for T in lengths:
    try:
        ids = torch.randint(0, V, (T,), device=dev, generator=gen)
        for _ in range(3):
            prefill(ids)
        torch.cuda.synchronize()
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            prefill(ids)
            torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) * 1000)
        ms = sorted(times)[len(times) // 2]
        res['rows'].append({'promptTokens': T, 'ms': ms, 'tokensPerSecond': T * 1000 / ms, 'runs': times})
        print(f'torch fp16 prefill {T} tokens: {ms:.1f} ms ({T * 1000 / ms:.0f} tok/s)', flush=True)
    except Exception as e:  # noqa: BLE001 (a row that fails is reported, the others still run)
        res['errors'].append(f'{T}: {e}')
        print(f'torch fp16 prefill {T} tokens: FAILED {e}', flush=True)
    with open(out_path, 'w') as fh:
        json.dump(res, fh, indent=1)
