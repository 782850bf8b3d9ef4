import { XqFormatError } from '@xquant/quant';

const LLAMA3_REGEX =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const QWEN2_REGEX =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/**
 * Pre-tokenizers for the `tokenizer.ggml.pre` labels this loader knows (llama.cpp compiles these regexes in
 * rather than storing them in the file).
 */
const PRE_TOKENIZERS: Record<string, object> = {
  'gpt-2': { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
  'llama-bpe': {
    type: 'Sequence',
    pretokenizers: [
      { type: 'Split', pattern: { Regex: LLAMA3_REGEX }, behavior: 'Isolated', invert: false },
      { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false },
    ],
  },
  qwen2: {
    type: 'Sequence',
    pretokenizers: [
      { type: 'Split', pattern: { Regex: QWEN2_REGEX }, behavior: 'Isolated', invert: false },
      { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false },
    ],
  },
};

/** `tokenizer.ggml.pre` labels that {@link ggufTokenizerJson} can rebuild. */
export const GGUF_PRE_TOKENIZERS = Object.keys(PRE_TOKENIZERS);

function int(v: unknown): number | undefined {
  if (typeof v === 'number' && Number.isInteger(v)) return v;
  if (typeof v === 'bigint' && v >= 0n && v <= BigInt(Number.MAX_SAFE_INTEGER)) return Number(v);
  return undefined;
}

/**
 * Rebuild a `tokenizer.json` + `tokenizer_config.json` pair from GGUF `tokenizer.ggml.*` metadata for a
 * byte-level BPE vocabulary (`tokenizer.ggml.model = "gpt2"`). Control (type 3) and user-defined (type 4)
 * tokens become added tokens; `add_bos_token` becomes a BOS-prepending post-processor. SentencePiece
 * (`"llama"`) vocabularies and unknown pre-tokenizers throw `XqFormatError`.
 */
export function ggufTokenizerJson(md: Record<string, unknown>, source: string): { json: object; config: object } {
  const model = md['tokenizer.ggml.model'];
  if (model !== 'gpt2') {
    throw new XqFormatError(
      `${source}: embedded tokenizer model ${JSON.stringify(model)} is not supported (only byte-level BPE "gpt2"); pass a tokenizer.json instead`,
    );
  }
  const tokens = md['tokenizer.ggml.tokens'];
  const merges = md['tokenizer.ggml.merges'];
  if (!Array.isArray(tokens) || tokens.length === 0 || !tokens.every((t) => typeof t === 'string')) {
    throw new XqFormatError(`${source}: tokenizer.ggml.tokens must be a non-empty string array`);
  }
  if (!Array.isArray(merges) || !merges.every((m) => typeof m === 'string' && m.includes(' '))) {
    throw new XqFormatError(`${source}: tokenizer.ggml.merges must be an array of "left right" strings`);
  }
  const types = md['tokenizer.ggml.token_type'];
  if (types !== undefined && (!Array.isArray(types) || types.length !== tokens.length)) {
    throw new XqFormatError(`${source}: tokenizer.ggml.token_type must have one entry per token (${tokens.length})`);
  }
  const pre = (md['tokenizer.ggml.pre'] as string | undefined) ?? 'gpt-2';
  const preTokenizer = PRE_TOKENIZERS[pre];
  if (!preTokenizer) {
    throw new XqFormatError(
      `${source}: tokenizer.ggml.pre ${JSON.stringify(pre)} is not supported (supported: ${GGUF_PRE_TOKENIZERS.join(', ')}); pass a tokenizer.json instead`,
    );
  }
  const vocab: Record<string, number> = {};
  const added: object[] = [];
  for (let id = 0; id < tokens.length; id++) {
    const content = tokens[id] as string;
    if (!(content in vocab)) vocab[content] = id;
    const type = int((types as unknown[] | undefined)?.[id]) ?? 1;
    if (type === 3 || type === 4) {
      added.push({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: type === 3 });
    }
  }
  const bosId = int(md['tokenizer.ggml.bos_token_id']);
  const eosId = int(md['tokenizer.ggml.eos_token_id']);
  for (const [name, id] of [['bos', bosId], ['eos', eosId]] as const) {
    if (id !== undefined && (id < 0 || id >= tokens.length)) {
      throw new XqFormatError(`${source}: tokenizer.ggml.${name}_token_id ${id} is outside the vocabulary [0, ${tokens.length})`);
    }
  }
  const addBos = md['tokenizer.ggml.add_bos_token'] === true && bosId !== undefined;
  const bos = bosId === undefined ? undefined : (tokens[bosId] as string);
  const postProcessor = addBos
    ? {
        type: 'TemplateProcessing',
        single: [{ SpecialToken: { id: bos, type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
        pair: [
          { SpecialToken: { id: bos, type_id: 0 } },
          { Sequence: { id: 'A', type_id: 0 } },
          { SpecialToken: { id: bos, type_id: 0 } },
          { Sequence: { id: 'B', type_id: 0 } },
        ],
        special_tokens: { [bos!]: { id: bos, ids: [bosId], tokens: [bos] } },
      }
    : null;
  const json = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: null,
    pre_tokenizer: preTokenizer,
    post_processor: postProcessor,
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: pre === 'llama-bpe',
      vocab,
      merges,
    },
  };
  const config: Record<string, unknown> = { clean_up_tokenization_spaces: false };
  if (bos !== undefined) config.bos_token = bos;
  if (eosId !== undefined) config.eos_token = tokens[eosId];
  return { json, config };
}
