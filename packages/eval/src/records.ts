import { readFile, stat } from 'node:fs/promises';
import { basename } from 'node:path';
import { XqError, XqFormatError } from '@xquant/quant';

/** A held-out prose window scored by perplexity / KL / top-1 (`prose_512.jsonl`). */
export interface ProseRecord {
  /** Discriminant. */
  kind: 'prose';
  /** Record id from the file (or its line number when the file has none). */
  id: string;
  /** Token ids, starting with BOS. */
  inputIds: number[];
}

/** A passkey-retrieval prompt (`passkey_L.jsonl`). */
export interface PasskeyRecord {
  /** Discriminant. */
  kind: 'passkey';
  /** Record id from the file (or its line number). */
  id: string;
  /** Length bucket the prompt belongs to (256, 512, 1024, 2048), or its token count rounded up to a power of two. */
  length: number;
  /** The digits the model must produce. */
  answer: string;
  /** Prompt token ids, starting with BOS; the model should continue with the answer. */
  inputIds: number[];
}

/** One record of an eval file. */
export type EvalRecord = ProseRecord | PasskeyRecord;

/** The records of one JSONL file, all of one kind. */
export interface EvalFile {
  /** Path as given. */
  path: string;
  /** File name (used as a stable key in results: shards read the same files from different directories). */
  name: string;
  /** What every record of the file is. */
  kind: 'prose' | 'passkey';
  /** Records in file order. */
  records: EvalRecord[];
}

/** Largest eval file accepted (bytes). */
export const EVAL_FILE_MAX_BYTES = 512 * 1024 * 1024;

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function tokenIds(v: unknown, where: string): number[] {
  if (!Array.isArray(v) || v.length === 0) {
    throw new XqFormatError(`${where}: "input_ids" must be a non-empty array of token ids; got ${Array.isArray(v) ? 'an empty array' : typeof v}`);
  }
  for (let i = 0; i < v.length; i++) {
    const id = v[i];
    if (typeof id !== 'number' || !Number.isInteger(id) || id < 0) {
      throw new XqFormatError(`${where}: input_ids[${i}] must be a non-negative integer; got ${JSON.stringify(id)}`);
    }
  }
  return v as number[];
}

/**
 * Parse one JSON record. A record with `answer` is a passkey prompt (needs `input_ids`, `answer` of digits and
 * `length_bucket` or `n_tokens`); a record with only `input_ids` (plus optional `id`, `text`) is prose.
 */
export function parseRecord(raw: unknown, where: string): EvalRecord {
  if (!isObject(raw)) throw new XqFormatError(`${where}: expected a JSON object per line; got ${Array.isArray(raw) ? 'an array' : typeof raw}`);
  const inputIds = tokenIds(raw.input_ids, where);
  const id = raw.id === undefined ? where : String(raw.id);
  if ('answer' in raw) {
    const answer = raw.answer;
    if ((typeof answer !== 'string' && typeof answer !== 'number') || !/^\d+$/.test(String(answer))) {
      throw new XqFormatError(`${where}: passkey "answer" must be a string of digits; got ${JSON.stringify(answer)}`);
    }
    let length = raw.length_bucket;
    if (length === undefined) length = 2 ** Math.ceil(Math.log2(inputIds.length));
    if (typeof length !== 'number' || !Number.isInteger(length) || length <= 0) {
      throw new XqFormatError(`${where}: "length_bucket" must be a positive integer; got ${JSON.stringify(raw.length_bucket)}`);
    }
    if (raw.n_tokens !== undefined && raw.n_tokens !== inputIds.length) {
      throw new XqFormatError(`${where}: "n_tokens" is ${JSON.stringify(raw.n_tokens)} but input_ids holds ${inputIds.length} ids`);
    }
    return { kind: 'passkey', id, length, answer: String(answer), inputIds };
  }
  return { kind: 'prose', id, inputIds };
}

/** Parse JSONL text: one record per non-empty line, all prose or all passkey (else `E_FORMAT`). */
export function parseEvalJsonl(text: string, path = 'eval.jsonl'): EvalFile {
  const records: EvalRecord[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.trim();
    if (line === '') continue;
    let raw: unknown;
    try {
      raw = JSON.parse(line);
    } catch (e) {
      throw new XqFormatError(`${path}:${i + 1}: not valid JSON (${(e as Error).message})`, { cause: e });
    }
    records.push(parseRecord(raw, `${path}:${i + 1}`));
  }
  if (records.length === 0) throw new XqFormatError(`${path}: no records (expected one JSON object per line)`);
  const kind = records[0]!.kind;
  const other = records.findIndex((r) => r.kind !== kind);
  if (other >= 0) {
    throw new XqFormatError(`${path}: mixes ${kind} and ${records[other]!.kind} records (record ${other + 1}); use one file per kind`);
  }
  return { path, name: basename(path), kind, records };
}

/** Read an eval JSONL file (prose or passkey, recognised by its records). Errors: `E_IO` (missing), `E_FORMAT`. */
export async function readEvalFile(path: string): Promise<EvalFile> {
  let size: number;
  try {
    const s = await stat(path);
    if (!s.isFile()) throw new XqError('E_IO', `${path}: not a file`);
    size = s.size;
  } catch (e) {
    if (XqError.isInstance(e)) throw e;
    throw new XqError('E_IO', `${path}: cannot read eval file (${(e as Error).message})`, { cause: e });
  }
  if (size > EVAL_FILE_MAX_BYTES) throw new XqFormatError(`${path}: ${size} bytes is larger than the ${EVAL_FILE_MAX_BYTES}-byte limit for eval files`);
  return parseEvalJsonl(await readFile(path, 'utf8'), path);
}
