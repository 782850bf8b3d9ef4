"""Tables of docs/report/rotation.md from `xquant eval` results: python3 table.py DIR TAG R [BASE:ROT,ROT ...]

Reads DIR/<model>.<TAG>.json (prose) and DIR/<model>.<TAG>.passkey.json (optional). KL and top-1 are pooled over
all predicted tokens (as `xquant eval`); ΔKL is the mean over records of (rotated − unrotated) per-record KL, with its
standard error, i.e. a paired comparison on the same records."""
import json, math, os, sys

d, tag, R = sys.argv[1], sys.argv[2], int(sys.argv[3])
groups = [a.split(':') for a in sys.argv[4:]] or [
    ['kivi-2', 'rot-kivi-2,rot-kv-kivi-2'], ['asymkv-1.5', 'rot-asymkv-1.5,rot-kv-asymkv-1.5'],
    ['xquant-noshare', 'rot-xquant-noshare,rot-kv-xquant-noshare']]
sfx = '' if tag == '-' else '.' + tag
for m in ('xq-llama-20m', 'xq-qwen2-30m'):
    path = os.path.join(d, f'{m}{sfx}.json')
    if not os.path.exists(path): continue
    pr = json.load(open(path))
    pkp = os.path.join(d, f'{m}{sfx}.passkey.json')
    pk = json.load(open(pkp)) if os.path.exists(pkp) else None
    cid = lambda n: 'full' if n == 'full' else f'{n}/R{R}/g32'
    configs = {c['id']: c for c in pr['configs']}
    def prose(n):
        c = cid(n); recs = pr['prose']; N = sum(r['perCache'][c]['n'] for r in recs)
        return (sum(r['perCache'][c]['kl'] for r in recs) / N, sum(r['perCache'][c]['top1'] for r in recs) / N,
                math.exp(sum(r['perCache'][c]['nll'] for r in recs) / N), [r['perCache'][c]['kl'] / r['perCache'][c]['n'] for r in recs])
    def passkey(n):
        if pk is None: return '–'
        c = cid(n)
        return ' · '.join(f"{sum(r['perCache'][c]['correct'] for r in pk['passkey'] if r['length'] == L)}/{sum(1 for r in pk['passkey'] if r['length'] == L)}" for L in (1024, 2048))
    def row(n, extra=''):
        k, t, p, _ = prose(n)
        kl = f'{k:.1e}' if n == 'rot-full' else f'{k:.4f}'
        return f"| {n} | {configs[cid(n)]['storedBits']:.3f} | {p:.2f} | {kl} | {t:.4f} | {extra} | {passkey(n)} |"
    print(f'\n**{m}, R = {R}, group size 32** (prose_512: 8 spaced records; passkey 1024 · 2048: first 10 each)\n')
    print('| config | stored bits @2048 | ppl | KL | top-1 | ΔKL vs unrotated (paired ± SE; records better) | passkey 1024 · 2048 |')
    print('|---|---:|---:|---:|---:|---|---|')
    for n in ('full', 'rot-full'):
        if cid(n) in configs: print(row(n))
    for base, rots in groups:
        kb, _, _, perb = prose(base)
        print(row(base))
        for r in rots.split(','):
            k, _, _, per = prose(r)
            dd = [y - x for x, y in zip(perb, per)]; n = len(dd); mu = sum(dd) / n
            se = math.sqrt(sum((x - mu) ** 2 for x in dd) / (n - 1) / n)
            print(row(r, f"{mu:+.4f} ± {se:.4f} ({(k / kb - 1) * 100:+.0f}%; {sum(x < 0 for x in dd)}/{n})"))
