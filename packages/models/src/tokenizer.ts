import { existsSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { XqError, XqFormatError } from '@xquant/quant';
import { isObject, readJsonFile } from './loaders/file.js';

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
 * (`new Tokenizer(json, config)` of `@huggingface/tokenizers`). `source` names the origin in errors.
 */
export function createTokenizer(tokenizerJson: unknown, tokenizerConfig: unknown = {}, source = 'tokenizer.json'): TextTokenizer {
  if (!isObject(tokenizerJson)) throw new XqFormatError(`${source}: tokenizer.json must be a JSON object`);
  if (!isObject(tokenizerJson.model)) throw new XqFormatError(`${source}: tokenizer.json has no "model" object`);
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
  return {
    encode: (text, options) => tok.encode(text, { add_special_tokens: options?.addSpecialTokens ?? true }).ids,
    decode: (ids, options) => (ids.length === 0 ? '' : tok.decode(Array.from(ids), { skip_special_tokens: options?.skipSpecialTokens ?? true })),
    tokenToId: (t) => tok.token_to_id(t),
    idToToken: (id) => tok.id_to_token(id),
    bosTokenId,
    eosTokenId,
  };
}

/**
 * Load a tokenizer from a model directory (tokenizer.json + optional tokenizer_config.json) or from a
 * tokenizer.json path (tokenizer_config.json is looked up beside it).
 */
export async function loadTokenizer(pathOrDir: string): Promise<TextTokenizer> {
  let jsonPath = pathOrDir;
  if (existsSync(pathOrDir) && statSync(pathOrDir).isDirectory()) jsonPath = join(pathOrDir, 'tokenizer.json');
  if (!existsSync(jsonPath)) {
    throw new XqError('E_IO', `${jsonPath}: tokenizer.json not found (a model directory needs tokenizer.json for text input/output)`);
  }
  const json = await readJsonFile(jsonPath, TOKENIZER_JSON_MAX_BYTES, 'tokenizer.json');
  const configPath = join(dirname(jsonPath), 'tokenizer_config.json');
  const config = existsSync(configPath) ? await readJsonFile(configPath, 16 * 1024 * 1024, 'tokenizer_config.json') : {};
  return createTokenizer(json, config, jsonPath);
}
