// Fuzz target: tokenizer loading and use. A byte-level BPE tokenizer round-trips any text exactly; a tokenizer.json
// with a random part replaced (by random JSON, or by a random regex) builds to a working tokenizer or fails with a
// typed error, and its encode/decode either work or fail typed; a regex the safety check accepts shows no
// exponential slow-down on adversarial input.
import { invariant, typedOrThrow } from '../lib.mjs';

function bytesToUnicode() {
  const bs = [];
  for (let b = 33; b <= 126; b++) bs.push(b);
  for (let b = 161; b <= 172; b++) bs.push(b);
  for (let b = 174; b <= 255; b++) bs.push(b);
  const cs = [...bs];
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) {
      bs.push(b);
      cs.push(256 + n++);
    }
  }
  const out = Array(256);
  bs.forEach((b, i) => (out[b] = String.fromCodePoint(cs[i])));
  return out;
}

const ALPHABET = bytesToUnicode();
const MERGES = [['Ġ', 't'], ['h', 'e'], ['Ġt', 'he'], ['1', '2']];

function tinyJson() {
  const tokens = ['<|bos|>', '<|eos|>', ...ALPHABET, ...MERGES.map(([a, b]) => a + b)];
  const vocab = {};
  tokens.forEach((t, i) => (vocab[t] = i));
  const special = (id, content) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
  return {
    version: '1.0',
    added_tokens: [special(0, '<|bos|>'), special(1, '<|eos|>')],
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: null,
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: false, byte_fallback: false, vocab, merges: MERGES },
  };
}

/** Small regexes over a tiny alphabet, with groups, alternation and quantifiers nested up to depth 3. */
function regexArb(fc) {
  const { tree } = fc.letrec((tie) => ({
    tree: fc.oneof({ depthSize: 'small', withCrossShrink: true }, tie('atom'), tie('seq'), tie('alt'), tie('quant')),
    atom: fc.constantFrom('a', 'b', ' ', '\\s', '\\w', '.', '[ab]', '\\p{L}', '[^\\s]'),
    seq: fc.array(tie('tree'), { minLength: 2, maxLength: 3 }).map((xs) => xs.join('')),
    alt: fc.array(tie('tree'), { minLength: 2, maxLength: 3 }).map((xs) => `(?:${xs.join('|')})`),
    quant: fc.tuple(tie('tree'), fc.constantFrom('*', '+', '?', '{1,3}', '{2,}', '*?')).map(([x, q]) => `(?:${x})${q}`),
  }));
  return tree;
}

/** Replace the value at a path (list of keys/indices, taken modulo what exists) of a JSON value. */
function replaceAt(json, path, value) {
  const root = structuredClone(json);
  let node = root;
  for (let d = 0; d < path.length; d++) {
    const keys = Array.isArray(node) ? node.map((_, i) => i) : node && typeof node === 'object' ? Object.keys(node) : [];
    if (keys.length === 0) break;
    const k = keys[path[d] % keys.length];
    if (d === path.length - 1 || node[k] === null || typeof node[k] !== 'object') {
      node[k] = value;
      return root;
    }
    node = node[k];
  }
  return root;
}

function msFor(re, text) {
  const t0 = performance.now();
  re.lastIndex = 0;
  for (let m = re.exec(text); m !== null; m = re.exec(text)) if (m[0] === '') re.lastIndex++; // step over empty matches
  return performance.now() - t0;
}

export default {
  name: 'tokenizer',
  description: 'createTokenizer / encode / decode on intact, mutated and regex-bearing tokenizer.json files; regexHazard',
  packages: ['quant', 'models'],
  arbitrary: (fc) =>
    fc.record({
      text: fc.oneof(fc.string({ unit: 'binary', maxLength: 40 }), fc.string({ unit: 'grapheme', maxLength: 40 }), fc.constantFrom('the 12 he', '  \n\t x', '')),
      mode: fc.constantFrom('intact', 'mutated', 'regex'),
      path: fc.array(fc.nat(), { minLength: 1, maxLength: 4 }),
      value: fc.jsonValue({ maxDepth: 2 }),
      regex: regexArb(fc),
    }),
  async check(input, { quant, models }) {
    let json = tinyJson();
    if (input.mode === 'mutated') json = replaceAt(json, input.path, input.value);
    if (input.mode === 'regex') {
      const h = models.regexHazard(input.regex); // must return, never throw
      if (!h) {
        let re;
        try {
          re = new RegExp(input.regex, 'gu');
        } catch {
          re = undefined;
        }
        if (re) {
          // exponential backtracking shows as a steep growth with the input length; polynomial does not
          // (best of 3 timings; a slow-down must repeat from 18 to 22 characters, so a GC pause or a busy machine is
          // not taken for one)
          const adversarial = (n) => `${'a'.repeat(n)}!`;
          const best = (n) => Math.min(msFor(re, adversarial(n)), msFor(re, adversarial(n)), msFor(re, adversarial(n)));
          const t18 = msFor(re, adversarial(18));
          if (t18 > 40) {
            const [b14, b18] = [best(14), best(18)];
            if (b18 > 40 && b18 / Math.max(b14, 0.5) > 6) {
              const b22 = msFor(re, adversarial(22));
              invariant(b22 / b18 < 6, `regex ${JSON.stringify(input.regex)} passed regexHazard but slows ${(b18 / b14).toFixed(1)}× from 14 to 18 and ${(b22 / b18).toFixed(1)}× from 18 to 22 characters`);
            }
          }
        }
      }
      json.pre_tokenizer = {
        type: 'Sequence',
        pretokenizers: [
          { type: 'Split', pattern: { Regex: input.regex }, behavior: 'Isolated', invert: false },
          { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false },
        ],
      };
      if (h) {
        let refused = false;
        try {
          models.createTokenizer(json, {}, 'fuzz/tokenizer.json');
        } catch (e) {
          typedOrThrow(e, quant, 'createTokenizer');
          refused = true;
        }
        invariant(refused, `createTokenizer accepted ${JSON.stringify(input.regex)}, which regexHazard flags`);
        return 'rejected';
      }
    }
    let tok;
    try {
      // clean_up_tokenization_spaces off: the clean-up (" !" → "!") is lossy by design
      tok = models.createTokenizer(json, { bos_token: '<|bos|>', eos_token: '<|eos|>', clean_up_tokenization_spaces: false }, 'fuzz/tokenizer.json');
    } catch (e) {
      invariant(input.mode !== 'intact', `the intact tokenizer was rejected: ${e?.message}`);
      return typedOrThrow(e, quant, 'createTokenizer');
    }
    let ids;
    let text;
    try {
      ids = tok.encode(input.text, { addSpecialTokens: false });
      text = tok.decode(ids);
    } catch (e) {
      invariant(input.mode !== 'intact', `the intact tokenizer failed on ${JSON.stringify(input.text)}: ${e?.message}`);
      return typedOrThrow(e, quant, 'encode/decode');
    }
    invariant(Array.isArray(ids) && ids.every((i) => Number.isInteger(i) && i >= 0), 'encode returned non-ids');
    if (input.mode !== 'mutated') {
      // byte-level BPE is lossless on well-formed Unicode (lone surrogates become U+FFFD in UTF-8)
      const wellFormed = input.text.isWellFormed ? input.text.isWellFormed() : !/[\uD800-\uDFFF]/.test(input.text);
      if (wellFormed) invariant(text === input.text, `round trip changed ${JSON.stringify(input.text)} into ${JSON.stringify(text)}`);
    }
    return 'ok';
  },
};
