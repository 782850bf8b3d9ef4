import { describe, expect, test } from 'vitest';
import { decodeKernelSource, denseKeyIndex, keyQuadIndex, keyWordIndex, valueCodeAt, valueMetaIndex, valueQuadIndex, VALUE_META_BLOCK, type DecodeSpec } from '../src/device/attention-wgsl.js';
import type { GpuBits } from '../src/layout.js';

// The device cache's address helpers return WGSL u32 expressions (integer literals with a `u` suffix, + − * / %, the
// capacity `S.cap`). Evaluated here with BigInt (whose / and % truncate, as u32 arithmetic does) over every element of
// small caches: each layout must put every element in its own place and fill its buffer region exactly — a collision
// would silently overwrite codes, a gap or an index past the region would read another buffer's bytes.
function evaluate(expr: string, vars: Record<string, number>): number {
  let js = expr.replace(/S\.cap/g, 'cap').replace(/\b(\d+)u\b/g, '$1n');
  for (const name of Object.keys(vars)) js = js.replace(new RegExp(`\\b${name}\\b`, 'g'), `v.${name}`);
  const v = Object.fromEntries(Object.entries(vars).map(([k, x]) => [k, BigInt(x)]));
  return Number(new Function('v', `return ${js};`)(v) as bigint);
}

/** Every index hit exactly `times` times and nothing outside [0, size). */
function expectTiles(hits: number[], size: number, times = 1): void {
  const count = new Array<number>(size).fill(0);
  for (const i of hits) {
    expect(Number.isInteger(i) && i >= 0 && i < size, `index ${i} outside [0, ${size})`).toBe(true);
    count[i]!++;
  }
  expect(count.every((c) => c === times)).toBe(true);
}

const KV = 2;
const cap = 64;

describe('device cache layouts: every element in its own place, the region filled exactly', () => {
  test.each([16, 32, 64, 128])('packed keys and their scale/zero words (channel-quad-major), head dim %i', (D) => {
    for (const bits of [1, 2, 4] as const) {
      const rows = (cap * bits) / 32; // token words per KV head
      const bitsOf: number[] = [];
      for (let kv = 0; kv < KV; kv++) {
        for (let t = 0; t < cap; t++) {
          for (let c = 0; c < D; c++) {
            const w = evaluate(keyWordIndex(D, 'kv', `${rows}u`, 'row', 'col'), { kv, row: Math.floor((t * bits) / 32), col: c });
            // the quad view of the same word
            expect(4 * evaluate(keyQuadIndex(D, 'kv', `${rows}u`, 'row', 'q'), { kv, row: Math.floor((t * bits) / 32), q: c >> 2 }) + (c % 4)).toBe(w);
            for (let b = 0; b < bits; b++) bitsOf.push(32 * w + ((t * bits) % 32) + b);
          }
        }
      }
      expectTiles(bitsOf, KV * cap * D * bits);
      const group = 32;
      const meta: number[] = [];
      for (let kv = 0; kv < KV; kv++) for (let g = 0; g < cap / group; g++) for (let c = 0; c < D; c++) meta.push(evaluate(keyWordIndex(D, 'kv', `(S.cap / ${group}u)`, 'g', 'c'), { kv, g, c, cap }));
      expectTiles(meta, (KV * cap * D) / group);
    }
  });

  test.each([32, 64, 128])('packed values (token blocks of 16-channel slices) and their scale/zero words (8-token blocks), head dim %i', (D) => {
    for (const bits of [1, 2, 4] as GpuBits[]) {
      const bitsOf: number[] = [];
      for (let kv = 0; kv < KV; kv++) {
        for (let t = 0; t < cap; t++) {
          for (let c = 0; c < D; c++) {
            const { index, shift } = valueCodeAt(D, bits, 'kv', 't', 'c');
            const w = evaluate(index, { kv, t, c, cap });
            const sh = evaluate(shift, { t, c });
            expect(sh + bits).toBeLessThanOrEqual(32);
            for (let b = 0; b < bits; b++) bitsOf.push(32 * w + sh + b);
          }
        }
      }
      expectTiles(bitsOf, KV * cap * D * bits);
      // a 16-channel slice of a block: the 8/bits tokens' codes of those channels fill one vec4, token after token
      const at = (t: number, c: number) => {
        const { index, shift } = valueCodeAt(D, bits, 'kv', 't', 'c');
        return 32 * evaluate(index, { kv: 1, t, c, cap }) + evaluate(shift, { t, c });
      };
      const B = 8 / bits;
      const first = at(B, 16);
      expect(first % 128).toBe(0);
      for (let j = 0; j < B; j++) for (let c = 0; c < 16; c++) expect(at(B + j, 16 + c) - first).toBe(j * 16 * bits + c * bits);
    }
    for (const groups of [1, 2, D / 16]) {
      const meta: number[] = [];
      for (let kv = 0; kv < KV; kv++) for (let t = 0; t < cap; t++) for (let g = 0; g < groups; g++) meta.push(evaluate(valueMetaIndex(groups, 'kv', 't', 'g'), { kv, t, g, cap }));
      expectTiles(meta, KV * cap * groups);
      // the scale/zero words of one group over a block of tokens are consecutive (the value loop loads them as vec4s)
      const base = evaluate(valueMetaIndex(groups, 'kv', 't', 'g'), { kv: 1, t: VALUE_META_BLOCK, g: groups - 1, cap });
      for (let j = 0; j < VALUE_META_BLOCK; j++) expect(evaluate(valueMetaIndex(groups, 'kv', 't', 'g'), { kv: 1, t: VALUE_META_BLOCK + j, g: groups - 1, cap })).toBe(base + j);
      expect(base % 4).toBe(0);
    }
  });

  test.each([32, 64, 128])("packed values of the int8 mix (quad layout: byte m of 4 tokens' rows per word), head dim %i", (D) => {
    for (const bits of [1, 2, 4] as const) {
      const RB = (D * bits) / 8; // bytes of a row
      const bytes: number[] = [];
      for (let kv = 0; kv < KV; kv++) {
        for (let t = 0; t < cap; t++) {
          for (let m = 0; m < RB; m++) bytes.push(4 * evaluate(valueQuadIndex(D, bits, 'kv', 't', 'm'), { kv, t, m, cap }) + (t % 4));
        }
      }
      expectTiles(bytes, KV * cap * RB);
      // the mix walks a thread slot's blocks from the chunk's first word: slot sb, block q of it, word w past m0
      const BW = 4;
      for (const [c0, sb, q, m0, w] of [[0, 0, 0, 0, 0], [64, 1, 2, 3, 1], [32, 3, 3, RB - 2, 1]] as const) {
        const qrow = evaluate(valueQuadIndex(D, bits, 'kv', 'c0', 'm0'), { kv: 1, c0, m0, cap });
        expect(qrow + sb * BW * RB + q * RB + w).toBe(evaluate(valueQuadIndex(D, bits, 'kv', 't', 'm'), { kv: 1, t: c0 + 4 * (sb * BW + q), m: m0 + w, cap }));
      }
    }
  });

  test.each([16, 64, 128])('fp16 keys (channel-octet-major), head dim %i', (D) => {
    const words: number[] = [];
    for (let kv = 0; kv < KV; kv++) for (let t = 0; t < cap; t++) for (let p = 0; p < D / 2; p++) words.push(evaluate(denseKeyIndex(D, 'kv', 't', 'p'), { kv, t, p, cap }));
    expectTiles(words, (KV * cap * D) / 2);
    // one channel octet of consecutive tokens: consecutive vec4s
    expect(evaluate(denseKeyIndex(D, 'kv', 't', 'p'), { kv: 1, t: 5, p: 4, cap }) - evaluate(denseKeyIndex(D, 'kv', 't', 'p'), { kv: 1, t: 4, p: 4, cap })).toBe(4);
  });
});

// The subgroup reductions' numbers are checked on lavapipe against the CPU cache (device-cache.test.ts); here, without
// a GPU, what they change in the kernel's structure.
describe('subgroup reductions in the decode kernel', () => {
  const packed: DecodeSpec = {
    headDim: 64,
    rep: 4,
    headsPerGroup: 2,
    keys: { kind: 'packed', bits: 2, groupSize: 32 },
    values: { kind: 'packed', bits: 1, groupSize: 64 },
    residual: true,
    workgroup: 256,
    slot: 8,
    unroll: 8,
    valueSlot: 16,
  };
  const count = (src: string, what: string) => src.split(what).length - 1;

  test('32-wide subgroups: three barriers fewer in the softmax, a reduce-scatter of log2(32 / 4) steps, both heads in one round', () => {
    const plain = decodeKernelSource(packed);
    const sg = decodeKernelSource({ ...packed, subgroupSize: 32 });
    expect(count(plain, 'subgroup')).toBe(0);
    expect(sg).toMatch(/^enable subgroups;$/m);
    expect(count(sg, 'subgroupMax(')).toBe(2);
    expect(count(sg, 'subgroupAdd(')).toBe(2);
    // 4 threads per 64-channel row (16-channel slots), 8 token lanes per subgroup: the 32 values of both heads in one
    // round (the scratch holds 8 subgroups' rows of both; every lane's rows of one head only), 16 + 8 + 4 shuffles
    expect(count(sg, 'subgroupShuffleXor(')).toBe(16 + 8 + 4);
    // softmax 5 → 2 barriers; lanes: two rounds of 3 (256 threads over 64 outputs summed 4 partials each) → one of 2
    expect(count(plain, 'workgroupBarrier()') - count(sg, 'workgroupBarrier()')).toBe(3 + 4);
    // the fold over 8 subgroups instead of 16 partials
    expect(sg).toMatch(/let lsum0 = red\[\d+u\](?: \+ red\[\d+u\]){7};/);
  });

  test('subgroups wider than a row of channel slices or than the workgroup: the workgroup-memory reductions stay', () => {
    // 64-wide subgroups and a 32-thread workgroup: nothing changes
    expect(decodeKernelSource({ ...packed, workgroup: 32, subgroupSize: 64 })).toBe(decodeKernelSource({ ...packed, workgroup: 32 }));
    // 4-wide subgroups and 8 threads per row (8-channel slots): softmax by subgroups, the lanes by workgroup memory
    const narrow = decodeKernelSource({ ...packed, valueSlot: 8, subgroupSize: 4 });
    expect(count(narrow, 'subgroupMax(')).toBe(2);
    expect(count(narrow, 'subgroupShuffleXor(')).toBe(0);
    expect(() => decodeKernelSource({ ...packed, subgroupSize: 48 })).toThrow(/power of two/);
    expect(() => decodeKernelSource({ ...packed, valueDot: 'int8', subgroupSize: 32 })).toThrow(/int8/);
  });
});
