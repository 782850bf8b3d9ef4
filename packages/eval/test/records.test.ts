import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseEvalJsonl, readEvalFile, selectRecords, parseShard } from '@xquant/eval';

const prose = (id: number) => JSON.stringify({ id, input_ids: [0, 5, 6, 7], text: 'x' });
const passkey = (id: number, L = 256) => JSON.stringify({ id: `p${id}`, length_bucket: L, n_tokens: 3, answer: '42', input_ids: [0, 9, 9] });

describe('eval files', () => {
  it('recognises prose and passkey files by their records', () => {
    const a = parseEvalJsonl(`${prose(0)}\n${prose(1)}\n`, 'a.jsonl');
    expect(a.kind).toBe('prose');
    expect(a.records).toHaveLength(2);
    const b = parseEvalJsonl(`${passkey(0)}\n\n${passkey(1, 512)}`, 'b.jsonl');
    expect(b.kind).toBe('passkey');
    expect(b.records[1]).toMatchObject({ kind: 'passkey', length: 512, answer: '42' });
  });

  it('rejects mixed files, bad JSON (with line), bad ids, bad answers, n_tokens mismatch, empty files', () => {
    expect(() => parseEvalJsonl(`${prose(0)}\n${passkey(1)}`, 'm.jsonl')).toThrow(/mixes prose and passkey/);
    expect(() => parseEvalJsonl(`${prose(0)}\n{oops`, 'j.jsonl')).toThrow(/j\.jsonl:2: not valid JSON/);
    expect(() => parseEvalJsonl('{"input_ids":[0,-1]}', 'i.jsonl')).toThrow(/input_ids\[1\] must be a non-negative integer/);
    expect(() => parseEvalJsonl('{"input_ids":[]}', 'e.jsonl')).toThrow(/non-empty array/);
    expect(() => parseEvalJsonl('{"input_ids":[0,1],"answer":"4x2"}', 'a.jsonl')).toThrow(/string of digits/);
    expect(() => parseEvalJsonl('{"input_ids":[0,1],"answer":"42","n_tokens":5}', 'n.jsonl')).toThrow(/n_tokens/);
    expect(() => parseEvalJsonl('\n\n', 'z.jsonl')).toThrow(/no records/);
    let err: unknown;
    try {
      parseEvalJsonl('[1]', 'x.jsonl');
    } catch (e) {
      err = e;
    }
    expect(err).toMatchObject({ code: 'E_FORMAT', name: 'XqFormatError' });
  });

  it('readEvalFile: missing file → E_IO; reads a file', async () => {
    await expect(readEvalFile('/nonexistent/x.jsonl')).rejects.toMatchObject({ code: 'E_IO' });
    const dir = mkdtempSync(join(tmpdir(), 'xq-eval-'));
    writeFileSync(join(dir, 'p.jsonl'), `${prose(0)}\n`);
    const f = await readEvalFile(join(dir, 'p.jsonl'));
    expect(f.name).toBe('p.jsonl');
  });

  it('shards partition the limited record list', () => {
    const f1 = parseEvalJsonl([0, 1, 2, 3, 4].map(prose).join('\n'), 'a.jsonl');
    const f2 = parseEvalJsonl([0, 1, 2].map((i) => passkey(i)).join('\n'), 'b.jsonl');
    const all = selectRecords([f1, f2], 4);
    expect(all).toHaveLength(7);
    const parts = [0, 1, 2].map((i) => selectRecords([f1, f2], 4, { index: i, count: 3 }));
    expect(parts.flat()).toHaveLength(7);
    const keys = parts.flat().map((r) => `${r.file.name}#${r.index}`);
    expect(new Set(keys).size).toBe(7);
    expect(parseShard('2/5')).toEqual({ index: 2, count: 5 });
    expect(() => parseShard('5/5')).toThrow(/0 ≤ i < n/);
    expect(() => parseShard('x')).toThrow(/i\/n/);
    expect(() => selectRecords([f1], 0)).toThrow(/limit/);
    // evenly spaced sample: 3 of 5 → 0, 1, 3; of the first 4 → 0, 1, 2
    expect(selectRecords([f1], undefined, undefined, 3).map((r) => r.index)).toEqual([0, 1, 3]);
    expect(selectRecords([f1], 4, undefined, 3).map((r) => r.index)).toEqual([0, 1, 2]);
    expect(selectRecords([f1], undefined, undefined, 9).map((r) => r.index)).toEqual([0, 1, 2, 3, 4]);
    expect(() => selectRecords([f1], undefined, undefined, 0)).toThrow(/sample/);
  });
});
