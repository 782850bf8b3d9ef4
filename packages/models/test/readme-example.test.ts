import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { createKvCache, selectBackend } from '@xquant/tfjs';
import { generate, loadModel } from '../src/index.js';

// The README's usage example, run on the checkpoint that ships with the repo; greedy output is checked against
// the transformers reference saved with the checkpoint (models/xq-demo/reference.json).
describe('README example on models/xq-demo', () => {
  it('generates the reference greedy continuation through the xquant-1.38 cache with R = 32 and reports memory', async () => {
    await selectBackend({ prefer: 'wasm' });
    const ref = JSON.parse(readFileSync('models/xq-demo/reference.json', 'utf8'));
    const p = ref.prompts?.[0] ?? ref[0];
    const { model, tokenizer } = await loadModel('models/xq-demo');
    // full cache: bit-for-bit greedy agreement with the reference
    const full = createKvCache('full', model.cacheShape);
    const a = await generate({ model, tokenizer, cache: full, ids: p.input_ids, maxNewTokens: 16, temperature: 0, stopOnEos: false });
    expect(a.ids).toEqual(p.greedy_ids.slice(0, 16));
    full.dispose();
    // the README's cache: runs, streams, and accounts its memory
    const cache = createKvCache('xquant-1.38', model.cacheShape, { residualLength: 32 });
    let streamed = '';
    const r = await generate({ model, tokenizer, cache, prompt: 'The configuration file', maxNewTokens: 48, temperature: 0, onToken: (t) => { streamed += t.text; } });
    expect(streamed).toBe(r.text);
    const mem = cache.memory();
    expect(mem.totalBytes).toBe(mem.codeBytes + mem.metadataBytes + mem.residualBytes);
    expect(mem.paperBitsPerElement).toBeCloseTo(16 / 12, 10); // 6 layers: keys 2·6, values 1·4 (layers 3, 5 borrow) over 12 tensors
    cache.dispose();
    model.dispose();
  });
});
