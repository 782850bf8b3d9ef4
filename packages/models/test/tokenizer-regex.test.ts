import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { XqFormatError } from '@xquant/quant';
import { checkTokenizerRegexes, createTokenizer, GGUF_PRE_TOKENIZERS, ggufTokenizerJson, loadTokenizer, regexHazard } from '../src/index.js';
import { tinyTokenizer } from './support/tiny.js';

// issue 13 item 9a: a tokenizer.json regex that backtracks exponentially is refused when the tokenizer is built

/** The tiny byte-level tokenizer with a Split pre-tokenizer on `pattern` before ByteLevel. */
function withSplit(pattern: string) {
  const t = tinyTokenizer();
  return {
    ...t.json,
    pre_tokenizer: {
      type: 'Sequence',
      pretokenizers: [
        { type: 'Split', pattern: { Regex: pattern }, behavior: 'Isolated', invert: false },
        { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false },
      ],
    },
  };
}

// pre-tokenizer and normalizer patterns of widely used tokenizers (as they appear in their tokenizer.json)
const REAL_PATTERNS: Record<string, string> = {
  'gpt-2 / ByteLevel': "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+",
  'llama-3': "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
  'qwen2': "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
  'gpt-4o (o200k)':
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
  'deepseek-v3 (words)': "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\\r\\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
  'deepseek-v3 (cjk)': '[一-龥぀-ゟ゠-ヿ]+',
  'bloom': ' ?[^(\\s|[.,!?…。，、।۔،])]+',
  't5 normalizer': ' {2,}',
  'starcoder digits': '\\p{N}',
};

const HOSTILE: [string, RegExp][] = [
  ['(a+)+$', /nested quantifier: '\(a\+\)\+'/],
  ['(a|a)*b', /nested quantifier/],
  ['(a|aa)+$', /nested quantifier/],
  ['(\\w+\\s?)*$', /nested quantifier/],
  ['(?:a*)*', /nested quantifier/],
  ['(a?b?)+c', /nested quantifier/],
  ['(a{1,3}){2,}x', /nested quantifier/],
  ['(?i:(x+x+)+y)', /nested quantifier/],
  ['(a)\\1', /backreference/],
  ['(?<q>a)\\k<q>', /backreference/],
  ['a*a*a*a*b', /more than 3 unbounded quantifiers/],
];

describe('tokenizer regex safety (issue 13 item 9a)', () => {
  it('refuses (a+)+$ at build time, fast, with the JSON path, instead of a 28 s encode of 29 characters', () => {
    const t0 = performance.now();
    let err: unknown;
    try {
      createTokenizer(withSplit('(a+)+$'), tinyTokenizer().config, 'evil/tokenizer.json');
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(XqFormatError);
    expect((err as Error).message).toMatch(/^evil\/tokenizer\.json: \$\.pre_tokenizer\.pretokenizers\[0\]\.pattern\.Regex "\(a\+\)\+\$" is refused: nested quantifier/);
    expect(performance.now() - t0).toBeLessThan(1000);
  });

  it.each(HOSTILE)('refuses %s', (pattern, why) => {
    expect(regexHazard(pattern)?.reason).toMatch(why);
    expect(() => createTokenizer(withSplit(pattern))).toThrow(XqFormatError);
  });

  it('finds patterns anywhere in the file: normalizer and decoder replacements too', () => {
    const t = tinyTokenizer().json;
    const normalizer = { type: 'Sequence', normalizers: [{ type: 'Replace', pattern: { Regex: '(x+)+y' }, content: '' }] };
    expect(() => checkTokenizerRegexes({ ...t, normalizer }, 'n.json')).toThrow(/\$\.normalizer\.normalizers\[0\]\.pattern\.Regex/);
    const decoder = { type: 'Replace', pattern: { Regex: '(?:\\s*)+$' }, content: '' };
    expect(() => checkTokenizerRegexes({ ...t, decoder }, 'd.json')).toThrow(/\$\.decoder\.pattern\.Regex/);
  });

  it.each(Object.entries(REAL_PATTERNS))('accepts the %s pattern and builds a tokenizer from it', (_, pattern) => {
    expect(regexHazard(pattern)).toBeUndefined();
    const tok = createTokenizer(withSplit(pattern), tinyTokenizer().config);
    expect(tok.decode(tok.encode('Hello  world 12345 — 語!\n\n', { addSpecialTokens: false }))).toBe('Hello  world 12345 — 語!\n\n');
  });

  it('accepts the pre-tokenizers the GGUF loader builds', () => {
    const t = tinyTokenizer();
    for (const pre of GGUF_PRE_TOKENIZERS) {
      const md = {
        'tokenizer.ggml.model': 'gpt2',
        'tokenizer.ggml.pre': pre,
        'tokenizer.ggml.tokens': t.tokens,
        'tokenizer.ggml.merges': t.merges.map((m) => m.join(' ')),
      };
      const { json } = ggufTokenizerJson(md, 'x.gguf');
      expect(() => checkTokenizerRegexes(json, pre)).not.toThrow();
    }
  });

  const SHARED = resolve('../shared/models');
  it.skipIf(!existsSync(SHARED))('the shared tokenizers pass the check and round-trip text (needs ../shared)', async () => {
    for (const m of ['xq-llama-20m', 'xq-qwen2-30m']) {
      const dir = join(SHARED, m);
      checkTokenizerRegexes(JSON.parse(readFileSync(join(dir, 'tokenizer.json'), 'utf8')), m);
      const tok = await loadTokenizer(dir);
      const text = 'The configuration file  of   the model\n\nsays 12345.';
      expect(tok.decode(tok.encode(text, { addSpecialTokens: false }))).toBe(text);
    }
  });

  it('a malformed vocabulary that builds is E_FORMAT when used, not garbage ids or an untyped error (found by fuzzing)', () => {
    const t = tinyTokenizer();
    const vocab = Object.fromEntries(Object.entries(t.json.model.vocab).map(([k, v]) => [k, v === 70 ? [] : v]));
    const tok = createTokenizer({ ...t.json, model: { ...t.json.model, vocab } }, t.config, 'bad/tokenizer.json');
    expect(tok.encode('ab', { addSpecialTokens: false }).every((id) => Number.isInteger(id))).toBe(true);
    const text = String.fromCharCode(...Object.entries(vocab).filter(([, v]) => Array.isArray(v)).map(([k]) => k.charCodeAt(0)));
    expect(() => tok.encode(text, { addSpecialTokens: false })).toThrow(XqFormatError);
    expect(() => tok.encode(text, { addSpecialTokens: false })).toThrow(/bad\/tokenizer\.json: encoding produced \[\], not a token id/);
  });
});
