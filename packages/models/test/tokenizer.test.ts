import { existsSync, readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { XqError, XqFormatError } from '@xquant/quant';
import { createTokenizer, loadTokenizer } from '../src/index.js';

const MODELS = '../shared/models';
const PROMPTS = '../shared/eval/prompts.json';
const have = existsSync(`${MODELS}/xq-llama-20m/tokenizer.json`) && existsSync(PROMPTS);

describe.skipIf(!have)('tokenizer vs stored prompt ids (needs ../shared/models and ../shared/eval; absent here)', () => {
  const prompts = have ? (JSON.parse(readFileSync(PROMPTS, 'utf8')) as { name: string; text: string; input_ids: number[] }[]) : [];
  for (const model of ['xq-llama-20m', 'xq-qwen2-30m']) {
    it(`${model}: encode(text) equals the stored input_ids and decode gives the text back`, async () => {
      const tok = await loadTokenizer(`${MODELS}/${model}`);
      expect(tok.bosTokenId).toBe(0);
      expect(tok.eosTokenId).toBe(1);
      for (const p of prompts) {
        expect(tok.encode(p.text), p.name).toEqual(p.input_ids);
        expect(tok.decode(p.input_ids), p.name).toBe(p.text);
      }
    });
  }
  it('edge cases: newlines, leading spaces, specials, CJK and emoji round-trip', async () => {
    const tok = await loadTokenizer(`${MODELS}/xq-llama-20m/tokenizer.json`);
    for (const text of ['\n', '  two spaces\n\nand newlines', '<|eos|> after', '日本語のテキスト', 'emoji 🚀🔥 end', '']) {
      const ids = tok.encode(text);
      expect(ids[0]).toBe(0);
      expect(tok.decode(ids)).toBe(text.replace('<|eos|>', ''));
      expect(tok.decode(ids, { skipSpecialTokens: false }).startsWith('<|bos|>')).toBe(true);
    }
    expect(tok.encode('<|eos|>', { addSpecialTokens: false })).toEqual([1]);
  });
});

describe('malformed tokenizer input', () => {
  it('rejects a non-object and a missing model', () => {
    expect(() => createTokenizer([], {})).toThrow(XqFormatError);
    expect(() => createTokenizer({ decoder: null }, {})).toThrow(/no "model"/);
  });
  it('rejects an unknown model type with a clear error', () => {
    expect(() => createTokenizer({ model: { type: 'Nope' } }, {})).toThrow(XqFormatError);
  });
  it('reports a missing file and bad JSON', async () => {
    const { mkdtempSync, writeFileSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const dir = mkdtempSync(`${tmpdir()}/xq-tok-`);
    await expect(loadTokenizer(dir)).rejects.toThrow(/tokenizer.json not found/);
    await expect(loadTokenizer(dir)).rejects.toSatisfy((e) => XqError.isInstance(e) && e.code === 'E_IO');
    writeFileSync(`${dir}/tokenizer.json`, '{"model": ');
    await expect(loadTokenizer(dir)).rejects.toThrow(/invalid JSON/);
  });
});
