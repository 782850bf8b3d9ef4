"""KL (pooled over the prose records) and passkey (per length) per configuration, from the JSON of this folder or of the
folder given (e.g. ../refine16): <model>.prose16.json and <model>.passkey10.json (models without them are skipped)."""
import collections
import json
import os
import sys

here = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
for m in ['xq-llama-20m', 'xq-qwen2-30m']:
    if not os.path.exists(f'{here}/{m}.prose16.json'):
        continue
    d = json.load(open(f'{here}/{m}.prose16.json'))
    bits = {c['id']: (c['storedBits'], c['paperBits']) for c in d['configs']}
    acc = collections.defaultdict(lambda: [0.0, 0])
    for rec in d['prose']:
        for cid, v in rec['perCache'].items():
            acc[cid][0] += v['kl']
            acc[cid][1] += v['n']
    p = json.load(open(f'{here}/{m}.passkey10.json'))
    pk = collections.defaultdict(lambda: collections.defaultdict(lambda: [0, 0]))
    for rec in p['passkey']:
        for cid, v in rec['perCache'].items():
            pk[cid][rec['length']][0] += 1 if v['correct'] else 0
            pk[cid][rec['length']][1] += 1
    print(m, 'prose records', len(d['prose']), '| passkey prompts', len(p['passkey']))
    base = acc['kivi-2/R32/g32'][0] / acc['kivi-2/R32/g32'][1]
    for cid, (s, n) in sorted(acc.items(), key=lambda x: bits[x[0]][0]):
        kl = s / n
        pks = ' '.join(f'{pk[cid][L][0]}/{pk[cid][L][1]}' for L in sorted(pk[cid])) if cid in pk else '-'
        print(f'  {cid:28s} true {bits[cid][0]:.3f} paper {bits[cid][1]:.3f} KL {kl:.4f} ({kl / base:.2f}x kivi-2)  passkey 256/512/1024/2048 {pks}')
