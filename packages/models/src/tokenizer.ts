import { Tokenizer } from '@huggingface/tokenizers';
import { XqError, XqFormatError } from '@xquant/quant';
import { isModelFiles, type ModelFiles } from './io/model-files.js';
import { resolveModelString, type OpenOptions } from './io/platform.js';
import { isObject, readJsonFile } from './loaders/file.js';
import { checkTokenizerRegexes } from './regex-safety.js';

/** Largest tokenizer.json accepted (bytes). */
export const TOKENIZER_JSON_MAX_BYTES = 256 * 1024 * 1024;

/** Encode/decode text with a model's tokenizer (a thin wrapper over `@huggingface/tokenizers`). */
export interface TextTokenizer {
  /** Token ids of `text`; special tokens (e.g. BOS) are added unless `addSpecialTokens` is false. */
  encode(text: string, options?: { addSpecialTokens?: boolean }): number[];
  /** Text of `ids`; special tokens are skipped unless `skipSpecialTokens` is false. */
  decode(ids: ArrayLike<number>, options?: { skipSpecialTokens?: boolean }): string;
  /** Id of a token string, if it is in the vocabulary. */
  tokenToId(token: string): number | undefined;
  /** Token string of an id, if any. */
  idToToken(id: number): string | undefined;
  /** Beginning-of-sequence id, when the tokenizer config names one. */
  readonly bosTokenId: number | undefined;
  /** End-of-sequence id, when the tokenizer config names one. */
  readonly eosTokenId: number | undefined;
}

function tokenContent(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (isObject(v) && typeof v.content === 'string') return v.content;
  return undefined;
}

/**
 * Build a {@link TextTokenizer} from parsed `tokenizer.json` and `tokenizer_config.json` objects
 * (`new Tokenizer(json, config)` of `@huggingface/tokenizers`). `source` names the origin in errors. Regex patterns
 * that could backtrack exponentially are refused first (`checkTokenizerRegexes`).
 */
export function createTokenizer(tokenizerJson: unknown, tokenizerConfig: unknown = {}, source = 'tokenizer.json'): TextTokenizer {
  if (!isObject(tokenizerJson)) throw new XqFormatError(`${source}: tokenizer.json must be a JSON object`);
  if (!isObject(tokenizerJson.model)) throw new XqFormatError(`${source}: tokenizer.json has no "model" object`);
  checkTokenizerRegexes(tokenizerJson, source);
  const config = isObject(tokenizerConfig) ? tokenizerConfig : {};
  const json = { normalizer: null, pre_tokenizer: null, post_processor: null, decoder: null, added_tokens: [], ...tokenizerJson };
  let tok: Tokenizer;
  try {
    tok = new Tokenizer(json, config);
  } catch (e) {
    throw new XqFormatError(`${source}: cannot build the tokenizer (${(e as Error).message})`, { cause: e });
  }
  const bosName = tokenContent(config.bos_token);
  const eosName = tokenContent(config.eos_token);
  const bosTokenId = bosName === undefined ? undefined : tok.token_to_id(bosName);
  const eosTokenId = eosName === undefined ? undefined : tok.token_to_id(eosName);
  // a malformed tokenizer.json can build and then fail (or return garbage) only when used: make both typed errors
  const fail = (what: string, e: unknown): never => {
    if (XqError.isInstance(e)) throw e;
    throw new XqFormatError(`${source}: ${what} failed (${(e as Error)?.message ?? String(e)}); the tokenizer.json is malformed`, { cause: e });
  };
  return {
    encode: (text, options) => {
      let ids: unknown;
      try {
        ids = tok.encode(text, { add_special_tokens: options?.addSpecialTokens ?? true }).ids;
      } catch (e) {
        return fail('encoding', e);
      }
      if (!Array.isArray(ids) || !ids.every((id) => Number.isInteger(id) && id >= 0)) {
        const bad = Array.isArray(ids) ? ids.find((id) => !(Number.isInteger(id) && id >= 0)) : ids;
        throw new XqFormatError(`${source}: encoding produced ${JSON.stringify(bad) ?? String(bad)}, not a token id; the vocabulary in tokenizer.json is malformed`);
      }
      return ids as number[];
    },
    decode: (ids, options) => {
      if (ids.length === 0) return '';
      try {
        return tok.decode(Array.from(ids), { skip_special_tokens: options?.skipSpecialTokens ?? true });
      } catch (e) {
        return fail('decoding', e);
      }
    },
    tokenToId: (t) => tok.token_to_id(t),
    idToToken: (id) => tok.id_to_token(id),
    bosTokenId,
    eosTokenId,
  };
}

/** Largest tokenizer_config.json accepted (bytes). */
export const TOKENIZER_CONFIG_MAX_BYTES = 16 * 1024 * 1024;

/**
 * Load a tokenizer from a model directory (tokenizer.json + optional tokenizer_config.json) or from a tokenizer.json
 * path (tokenizer_config.json is looked up beside it). `source`: a path (Node) or URL string, a `URL`, or the model's
 * files (`ModelFiles`, e.g. files picked in a browser).
 */
export async function loadTokenizer(source: string | URL | ModelFiles, options: OpenOptions = {}): Promise<TextTokenizer> {
  let files: ModelFiles;
  let jsonName = 'tokenizer.json';
  if (isModelFiles(source)) files = source;
  else {
    const r = await resolveModelString(source, options).catch((e: unknown) => {
      // a path that does not exist names a missing tokenizer.json
      if (XqError.isInstance(e) && e.code === 'E_IO') throw new XqError('E_IO', `${String(source)}: tokenizer.json not found (${e.message})`, { cause: e });
      throw e;
    });
    files = r.files;
    jsonName = r.entry ?? jsonName;
  }
  const jsonPath = files.pathOf(jsonName);
  const json = await files.open(jsonName);
  if (!json) {
    throw new XqError('E_IO', `${jsonPath}: tokenizer.json not found (a model directory needs tokenizer.json for text input/output)`);
  }
  const parsed = await readJsonFile(json, TOKENIZER_JSON_MAX_BYTES, 'tokenizer.json');
  const configSource = await files.open('tokenizer_config.json');
  const config = configSource ? await readJsonFile(configSource, TOKENIZER_CONFIG_MAX_BYTES, 'tokenizer_config.json') : {};
  return createTokenizer(parsed, config, jsonPath);
}
