import { describe, expect, it } from 'vitest';
import { XqFormatError } from '@xquant/quant';
import { GGUF_MAX_STRING_LENGTH, MemorySource, readGgufHeader, type ByteSource } from '../src/index.js';
import { GGUF_READ_WINDOW } from '../src/loaders/gguf-parse.js';
import { ggufBytes, type GgufValue } from './support/tiny.js';

// issue 13 item 3: GGUF metadata comes back exactly as the file holds it (lengths as the header declares them), or
// the read is a typed error — never a silently shortened or altered string

const enc = new TextEncoder();
const byteLength = (s: string) => enc.encode(s).length;

/** Deterministic strings with 1-, 2-, 3- and 4-byte UTF-8 characters. */
function tokenText(i: number, length: number): string {
  const alphabet = ['a', 'Z', ' ', 'é', 'ß', '語', 'Ġ', '😀', '\u{10FFFF}', '\uFEFF'];
  let s = `${i}:`;
  for (let k = 0; s.length < length; k++) s += alphabet[(i * 7 + k * 3) % alphabet.length];
  return s;
}

/** Absolute byte offsets of each element of a string array stored as the first metadata value. */
function elementOffsets(key: string, values: string[]): number[] {
  let at = 24 + 8 + byteLength(key) + 4 + 4 + 8; // header, key, type, element type, count
  return values.map((v) => {
    const start = at;
    at += 8 + byteLength(v);
    return start;
  });
}

async function header(bytes: Uint8Array) {
  return readGgufHeader(new MemorySource(bytes, 'crafted.gguf'));
}

async function formatError(p: Promise<unknown>): Promise<string> {
  const e = await p.then(
    () => undefined,
    (x: unknown) => x,
  );
  expect(e).toBeInstanceOf(XqFormatError);
  return (e as Error).message;
}

describe('GGUF metadata is exact or a typed error (issue 13 item 3)', () => {
  it('a 2.5 MB string value comes back whole', async () => {
    const long = tokenText(1, 2_500_000);
    const h = await header(ggufBytes({ 'general.architecture': { type: 'str', value: 'llama' }, 'general.long': { type: 'str', value: long } }, []));
    expect((h.metadata['general.long'] as string).length).toBe(long.length);
    expect(h.metadata['general.long']).toBe(long);
  });

  it('token strings that straddle the read window edges (1 and 2 MiB) come back exact, including multi-byte characters and BOMs', async () => {
    const tokens: string[] = [];
    for (let i = 0, bytes = 0; bytes < 2.6 * GGUF_READ_WINDOW; i++) {
      const t = tokenText(i, 1 + ((i * 37) % 400));
      tokens.push(t);
      bytes += 8 + byteLength(t);
    }
    const key = 'tokenizer.ggml.tokens';
    const offsets = elementOffsets(key, tokens);
    // the crafted file really has tokens across both edges, with the edge inside the string bytes
    for (const edge of [GGUF_READ_WINDOW, 2 * GGUF_READ_WINDOW]) {
      const i = offsets.findIndex((o, k) => o + 8 < edge && edge < o + 8 + byteLength(tokens[k]!));
      expect(i, `a token straddles byte ${edge}`).toBeGreaterThanOrEqual(0);
    }
    const md: Record<string, GgufValue> = { [key]: { type: 'arr_str', value: tokens } };
    const h = await header(ggufBytes(md, []));
    const got = h.metadata[key] as string[];
    expect(got.length).toBe(tokens.length);
    const wrong = got.findIndex((t, i) => t !== tokens[i]);
    expect(wrong, wrong >= 0 ? `token ${wrong}: ${got[wrong]!.length} chars, expected ${tokens[wrong]!.length}` : '').toBe(-1);
    // the byte length of every string equals the length its header declares
    const bytes = ggufBytes(md, []);
    const dv = new DataView(bytes.buffer);
    offsets.forEach((o, i) => expect(Number(dv.getBigUint64(o, true))).toBe(byteLength(got[i]!)));
  });

  it('read through a ByteSource, window by window, the tokens are the ones written', async () => {
    const tokens = Array.from({ length: 3000 }, (_, i) => tokenText(i, 1 + ((i * 13) % 700)));
    const bytes = ggufBytes({ 'tokenizer.ggml.tokens': { type: 'arr_str', value: tokens } }, []);
    let reads = 0;
    const slow: ByteSource = {
      name: 'pieces.gguf',
      size: bytes.length,
      async read(position, length) {
        reads++;
        return bytes.slice(position, position + length);
      },
    };
    const h = await readGgufHeader(slow);
    expect(h.metadata['tokenizer.ggml.tokens']).toEqual(tokens);
    expect(reads).toBeGreaterThan(1);
  });

  it('a source that returns fewer bytes than asked is a typed error, not a short string', async () => {
    const bytes = ggufBytes({ 'general.name': { type: 'str', value: tokenText(3, 5000) } }, []);
    const short: ByteSource = {
      name: 'short.gguf',
      size: bytes.length,
      async read(position, length) {
        return bytes.slice(position, position + Math.min(length, 4096));
      },
    };
    expect(await formatError(readGgufHeader(short))).toMatch(/unexpected end of file after 4096 of/);
  });

  it('invalid UTF-8 in a key or a value is a typed error naming it (was: silently replaced by U+FFFD)', async () => {
    const marker = 'MARKERMARKER';
    const bytes = ggufBytes({ 'general.name': { type: 'str', value: `ok ${marker} ok` } }, []);
    const at = Buffer.from(bytes).indexOf(marker);
    bytes[at + 3] = 0xff;
    expect(await formatError(header(bytes))).toMatch(/metadata 'general\.name' at byte \d+ \(\d+ bytes\) is not valid UTF-8/);
    const keyBytes = ggufBytes({ [`general.${marker}`]: { type: 'u32', value: 1 } }, []);
    keyBytes[Buffer.from(keyBytes).indexOf(marker)] = 0xc3; // a lead byte without its continuation
    expect(await formatError(header(keyBytes))).toMatch(/metadata key 0 .* is not valid UTF-8/);
  });

  it('declared lengths past the end of the file or above the limit are typed errors', async () => {
    const bytes = ggufBytes({ 'general.name': { type: 'str', value: 'abc' } }, []);
    const dv = new DataView(bytes.buffer);
    const valueLengthAt = 24 + 8 + byteLength('general.name') + 4;
    dv.setBigUint64(valueLengthAt, BigInt(bytes.length), true);
    expect(await formatError(header(bytes))).toMatch(/past the end of the file/);
    dv.setBigUint64(valueLengthAt, BigInt(GGUF_MAX_STRING_LENGTH + 1), true);
    expect(await formatError(header(bytes))).toMatch(/exceeds the maximum of 10000000/);
  });
});
