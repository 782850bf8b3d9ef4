import { XqFormatError } from '@xquant/quant';
import { isObject } from './loaders/file.js';

/** Longest regex source accepted in a tokenizer (characters). */
export const TOKENIZER_REGEX_MAX_LENGTH = 10_000;

/**
 * Most unbounded quantifiers (`*`, `+`, `{n,}`) one alternative of a tokenizer regex may chain: k of them over
 * overlapping characters backtrack in O(n^k) per start position (`a*a*a*a*b`). Real pre-tokenizers chain at most 2.
 */
export const TOKENIZER_REGEX_MAX_UNBOUNDED_RUN = 3;

/** Why a pattern is refused: what and where (0-based index into the source). */
export interface RegexHazard {
  /** The construct, e.g. `nested quantifier`. */
  reason: string;
  /** Index in the pattern source where the construct starts. */
  index: number;
}

interface Props {
  /** May match the same text in more than one way: holds a variable-count quantifier or an alternation. */
  ambiguous: boolean;
  /** Most unbounded quantifiers along one path through the sub-pattern. */
  unbounded: number;
}

class Hazard extends Error {
  constructor(
    readonly reason: string,
    readonly index: number,
  ) {
    super(reason);
  }
}

/** Recursive-descent reader of (Oniguruma / ECMAScript) regex syntax, just deep enough to find backtracking traps. */
class Scan {
  i = 0;
  constructor(private readonly s: string) {}

  alternation(): Props {
    const first = this.sequence();
    let { ambiguous, unbounded } = first;
    let branches = 1;
    while (this.s[this.i] === '|') {
      this.i++;
      branches++;
      const b = this.sequence();
      ambiguous ||= b.ambiguous;
      unbounded = Math.max(unbounded, b.unbounded);
    }
    return { ambiguous: ambiguous || branches > 1, unbounded };
  }

  private sequence(): Props {
    let ambiguous = false;
    let unbounded = 0;
    const seqStart = this.i;
    while (this.i < this.s.length && this.s[this.i] !== '|' && this.s[this.i] !== ')') {
      const start = this.i;
      let atom = this.atom();
      for (let q = this.quantifier(); q; q = this.quantifier()) {
        // a repeated operand that can match the same text in several ways backtracks exponentially: (a+)+, (a|a)*, (a?b?)*
        if (q.max > 1 && atom.ambiguous) {
          throw new Hazard(`nested quantifier: '${this.s.slice(start, this.i)}' repeats a sub-pattern that can match the same text in more than one way`, start);
        }
        atom = { ambiguous: atom.ambiguous || q.min !== q.max, unbounded: atom.unbounded + (q.max === Infinity ? 1 : 0) };
      }
      ambiguous ||= atom.ambiguous;
      unbounded += atom.unbounded;
      if (unbounded > TOKENIZER_REGEX_MAX_UNBOUNDED_RUN) {
        throw new Hazard(
          `more than ${TOKENIZER_REGEX_MAX_UNBOUNDED_RUN} unbounded quantifiers in a row in '${this.s.slice(seqStart, this.i)}' (polynomial backtracking of high degree)`,
          seqStart,
        );
      }
    }
    return { ambiguous, unbounded };
  }

  private quantifier(): { min: number; max: number } | undefined {
    const c = this.s[this.i];
    let q: { min: number; max: number } | undefined;
    if (c === '*') q = { min: 0, max: Infinity };
    else if (c === '+') q = { min: 1, max: Infinity };
    else if (c === '?') q = { min: 0, max: 1 };
    else if (c === '{') {
      const m = /^\{(\d*)(?:(,)(\d*))?\}/.exec(this.s.slice(this.i, this.i + 24));
      if (!m || (m[1] === '' && m[3] === undefined)) return undefined;
      const min = m[1] === '' ? 0 : Number(m[1]);
      const max = m[2] === undefined ? min : m[3] === '' ? Infinity : Number(m[3]);
      this.i += m[0].length - 1;
      q = { min, max };
    }
    if (!q) return undefined;
    this.i++;
    // lazy (?) and possessive (+) forms
    if (this.s[this.i] === '?' || this.s[this.i] === '+') this.i++;
    return q;
  }

  private atom(): Props {
    const s = this.s;
    const c = s[this.i]!;
    if (c === '(') {
      this.i++;
      if (s[this.i] === '?') {
        this.i++;
        if (s[this.i] === '<' && s[this.i + 1] !== '=' && s[this.i + 1] !== '!') {
          const end = s.indexOf('>', this.i);
          this.i = end < 0 ? s.length : end + 1; // named group
        } else if (s[this.i] === '<') this.i += 2; // lookbehind
        else if (s[this.i] === ':' || s[this.i] === '=' || s[this.i] === '!' || s[this.i] === '>') this.i++;
        else {
          // modifiers: (?i:…), (?-i:…), (?i)
          while (this.i < s.length && /[a-zA-Z-]/.test(s[this.i]!)) this.i++;
          if (s[this.i] === ')') {
            this.i++;
            return { ambiguous: false, unbounded: 0 };
          }
          if (s[this.i] === ':') this.i++;
        }
      }
      const inner = this.alternation();
      if (s[this.i] === ')') this.i++;
      return inner;
    }
    if (c === '[') {
      this.charClass();
      return { ambiguous: false, unbounded: 0 };
    }
    if (c === '\\') {
      this.escape();
      return { ambiguous: false, unbounded: 0 };
    }
    this.i++;
    return { ambiguous: false, unbounded: 0 };
  }

  private escape(): void {
    const s = this.s;
    const start = this.i;
    this.i++;
    const c = s[this.i];
    if (c === undefined) return;
    if (/[1-9]/.test(c) || (c === 'k' && s[this.i + 1] === '<') || (c === 'g' && s[this.i + 1] === '<')) {
      throw new Hazard('backreference or subroutine call (matching them can take exponential time)', start);
    }
    this.i++;
    if ((c === 'p' || c === 'P' || c === 'u' || c === 'x') && s[this.i] === '{') {
      const end = s.indexOf('}', this.i);
      this.i = end < 0 ? s.length : end + 1;
    }
  }

  private charClass(): void {
    const s = this.s;
    let depth = 0;
    this.i++;
    if (s[this.i] === '^') this.i++;
    if (s[this.i] === ']') this.i++; // a leading ] is a literal
    while (this.i < s.length) {
      const c = s[this.i]!;
      if (c === '\\') this.escape();
      else if (c === '[') {
        depth++;
        this.i++;
      } else if (c === ']') {
        this.i++;
        if (depth-- === 0) return;
      } else this.i++;
    }
  }
}

/**
 * Whether a regex may backtrack exponentially in the backtracking engine that runs tokenizer patterns (V8's, through
 * `@huggingface/tokenizers`): a backreference, or a repeated sub-pattern that can itself match the same text in more
 * than one way (`(a+)+`, `(a|a)*`, `(\s?\w?)+`, `(a{1,3}){2,}`), or more than
 * {@link TOKENIZER_REGEX_MAX_UNBOUNDED_RUN} unbounded quantifiers chained in one alternative (`a*a*a*a*b`, polynomial of
 * high degree). Returns the first such construct, or undefined. The test is structural and conservative: it refuses
 * some patterns that would run fast, never the ones real tokenizers use (GPT-2, Llama 3, Qwen2, GPT-4o, DeepSeek,
 * BLOOM style patterns pass); the quadratic backtracking those have (`\s*[\r\n]+` on a long run of spaces) stays.
 */
export function regexHazard(pattern: string): RegexHazard | undefined {
  if (pattern.length > TOKENIZER_REGEX_MAX_LENGTH) return { reason: `longer than ${TOKENIZER_REGEX_MAX_LENGTH} characters`, index: 0 };
  const scan = new Scan(pattern);
  try {
    while (scan.i < pattern.length) {
      scan.alternation();
      if (scan.i < pattern.length) scan.i++; // an unbalanced ')': the compiler reports it
    }
  } catch (e) {
    if (e instanceof Hazard) return { reason: e.reason, index: e.index };
    throw e;
  }
  return undefined;
}

/** Most nested levels {@link checkTokenizerRegexes} walks in a tokenizer.json. */
const MAX_DEPTH = 64;

/**
 * Refuse a tokenizer.json whose regex patterns (every `{"Regex": …}`: pre-tokenizer splits, normalizer and decoder
 * replacements) could make encoding take exponential time ({@link regexHazard}); tokenizers come from untrusted
 * repositories. Throws `XqFormatError` naming the JSON path, the construct and its position.
 */
export function checkTokenizerRegexes(tokenizerJson: unknown, source: string): void {
  const walk = (v: unknown, path: string, depth: number): void => {
    if (depth > MAX_DEPTH) throw new XqFormatError(`${source}: tokenizer.json nests deeper than ${MAX_DEPTH} levels at ${path}`);
    if (Array.isArray(v)) {
      v.forEach((x, i) => walk(x, `${path}[${i}]`, depth + 1));
      return;
    }
    if (!isObject(v)) return;
    for (const [k, x] of Object.entries(v)) {
      // the vocabulary and merges hold no patterns: skip them (they are the bulk of the file)
      if ((k === 'vocab' || k === 'merges') && path === '$.model') continue;
      if (k === 'Regex' && typeof x === 'string') {
        const h = regexHazard(x);
        if (h) {
          throw new XqFormatError(
            `${source}: ${path}.Regex ${JSON.stringify(x.length > 80 ? `${x.slice(0, 80)}…` : x)} is refused: ${h.reason} (at character ${h.index}); such patterns can make encoding take exponential time`,
          );
        }
      } else walk(x, `${path}.${k}`, depth + 1);
    }
  };
  walk(tokenizerJson, '$', 0);
}
