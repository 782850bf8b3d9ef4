"""fp16 decode attention in PyTorch on the same GPU: what a user would otherwise run.

One query position, head_dim 128 and 64 (env TORCH_DIMS, default "128,64"), 32 query heads over 32 or 8 KV heads, T cached tokens; F.scaled_dot_product_attention
in fp16 with each backend that runs (cuDNN, flash, memory-efficient, auto; GQA through enable_gqa). Inputs rotate through
several copies (>= 512 MB) so no call finds its K/V in L2. Kernel time: median of per-call CUDA-event intervals.
Also the read ceiling (an fp16 sum over 1 GiB). Usage: python3 torch_peer.py OUT.json [T ...]
"""
import json
import math
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

out_path = sys.argv[1]
tokens = [int(t) for t in sys.argv[2:]] or [32768, 131072]
import os

DIMS = [int(d) for d in os.environ.get('TORCH_DIMS', '128,64').split(',')]
HQ = 32
dev = 'cuda'
res = {'torch': torch.__version__, 'device': torch.cuda.get_device_name(), 'rows': [], 'errors': []}


def median_ms(fns, iters=60, warm=10):
    for i in range(warm):
        fns[i % len(fns)]()
    torch.cuda.synchronize()
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
    for i, (a, b) in enumerate(ev):
        a.record()
        fns[i % len(fns)]()
        b.record()
    torch.cuda.synchronize()
    t = sorted(a.elapsed_time(b) for a, b in ev)
    return t[len(t) // 2]


x = torch.randn(1 << 29, device=dev, dtype=torch.float16)
ms = median_ms([lambda: torch.sum(x, dtype=torch.float32)], iters=20)
res['readCeilingGBps'] = (1 << 30) / (ms * 1e6)
del x
torch.cuda.empty_cache()
print('torch read ceiling %.0f GB/s' % res['readCeilingGBps'], flush=True)

backends = {'auto': None, 'cudnn': SDPBackend.CUDNN_ATTENTION, 'flash': SDPBackend.FLASH_ATTENTION, 'efficient': SDPBackend.EFFICIENT_ATTENTION}
for T, D, hkv in [(T, D, hkv) for T in tokens for D in DIMS for hkv in (32, 8)]:
    if True:
        kv_bytes = 2 * hkv * T * D * 2
        copies = max(2, min(32, math.ceil((512 << 20) / kv_bytes)))
        g = torch.Generator(device=dev).manual_seed(T + hkv)
        sets = [(torch.randn(1, hkv, T, D, device=dev, dtype=torch.float16, generator=g), torch.randn(1, hkv, T, D, device=dev, dtype=torch.float16, generator=g)) for _ in range(copies)]
        q = (0.3 * torch.randn(1, HQ, 1, D, device=dev, generator=g)).half()
        best = None
        for name, be in backends.items():
            def call(k, v, be=be):
                if be is None:
                    return F.scaled_dot_product_attention(q, k, v, enable_gqa=hkv != HQ)
                with sdpa_kernel([be]):
                    return F.scaled_dot_product_attention(q, k, v, enable_gqa=hkv != HQ)
            try:
                fns = [lambda k=k, v=v: call(k, v) for k, v in sets]
                t = median_ms(fns)
                row = {'T': T, 'qHeads': HQ, 'kvHeads': hkv, 'headDim': D, 'backend': name, 'ms': t, 'GBps': kv_bytes / (t * 1e6)}
                res['rows'].append(row)
                print(f"T={T} {HQ}/{hkv} d={D} {name:9s} {t:.4f} ms {row['GBps']:.0f} GB/s", flush=True)
                if best is None or t < best:
                    best = t
            except Exception as e:  # a backend that does not run this shape
                res['errors'].append(f'{name} T={T} {HQ}/{hkv} d={D}: {type(e).__name__}: {str(e)[:200]}')
        res['rows'].append({'T': T, 'qHeads': HQ, 'kvHeads': hkv, 'headDim': D, 'backend': 'best', 'ms': best})
        del sets
        torch.cuda.empty_cache()
json.dump(res, open(out_path, 'w'), indent=1)
print('done', flush=True)
