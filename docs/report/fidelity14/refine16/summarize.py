"""KL (pooled over the 16 prose records) and passkey (10 prompts per length) per configuration, from this folder's JSON."""
import collections
import json
import os

here = os.path.dirname(os.path.abspath(__file__))
for m in ['xq-llama-20m', 'xq-qwen2-30m']:
    d = json.load(open(f'{here}/{m}.prose16.json'))
    bits = {c['id']: c['storedBits'] for c in d['configs']}
    acc = collections.defaultdict(lambda: [0.0, 0])
    for rec in d['prose']:
        for cid, v in rec['perCache'].items():
            acc[cid][0] += v['kl']
            acc[cid][1] += v['n']
    p = json.load(open(f'{here}/{m}.passkey10.json'))
    pk = collections.defaultdict(lambda: collections.defaultdict(lambda: [0, 0]))
    for rec in p['passkey']:
        for cid, v in rec['perCache'].items():
            pk[cid.split('/')[0]][rec['length']][0] += 1 if v['correct'] else 0
            pk[cid.split('/')[0]][rec['length']][1] += 1
    base = acc['kivi-2/R32/g32'][0] / acc['kivi-2/R32/g32'][1]
    print(m, 'prose records', len(d['prose']), '| passkey prompts', len(p['passkey']))
    for cid, (s, n) in acc.items():
        if cid == 'full':
            continue
        name = cid.split('/')[0]
        pks = '/'.join(f'{pk[name][L][0]}' for L in sorted(pk[name])) if name in pk else '-'
        print(f'  {name:26s} true {bits[cid]:.3f} KL {s / n:.4f} ({s / n / base:.3f}x kivi-2)  passkey of 10 at 256/512/1024/2048: {pks}')
