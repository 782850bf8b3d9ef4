import { XqError, XqFormatError } from '@xquant/quant';
import type { ModelConfig } from '../config.js';
import { parseHfConfig } from '../config.js';
import type { SourceInput } from '../io/byte-source.js';
import { isModelFiles, type ModelFiles } from '../io/model-files.js';
import { resolveModelString, type OpenOptions } from '../io/platform.js';
import type { WeightSource } from '../model.js';
import { isObject, readJsonFile } from './file.js';
import { SafetensorsFile } from './safetensors.js';

/** Largest config.json / generation_config.json / index json accepted (bytes). */
export const CONFIG_JSON_MAX_BYTES = 16 * 1024 * 1024;

/** Weights spread over one or more open safetensors files (closed by {@link SafetensorsWeights.close}). */
export class SafetensorsWeights implements WeightSource {
  private constructor(
    readonly source: string,
    private readonly files: SafetensorsFile[],
    private readonly byName: Map<string, SafetensorsFile>,
  ) {}

  /** Open a single `.safetensors` file (a path or URL string, a `URL`, a `Blob`, bytes or a `ByteSource`). */
  static async openFile(input: SourceInput, options: OpenOptions = {}): Promise<SafetensorsWeights> {
    const f = await SafetensorsFile.open(input, options);
    return new SafetensorsWeights(f.header.path, [f], new Map(f.names().map((n) => [n, f])));
  }

  /**
   * Open the shards listed by a `model.safetensors.index.json`: `index` is its path or URL, or the model's files with
   * `indexName` naming the index among them. Shard names must be plain file names in the index's directory, and every
   * mapped tensor must be present in its shard.
   */
  static async openIndex(index: string | URL | ModelFiles, indexName = 'model.safetensors.index.json', options: OpenOptions = {}): Promise<SafetensorsWeights> {
    let files: ModelFiles;
    if (isModelFiles(index)) files = index;
    else {
      const r = await resolveModelString(index, options);
      files = r.files;
      indexName = r.entry ?? indexName;
    }
    const indexPath = files.pathOf(indexName);
    const indexSource = await files.open(indexName);
    if (!indexSource) throw new XqError('E_IO', `${indexPath}: no such file`);
    const json = await readJsonFile(indexSource, CONFIG_JSON_MAX_BYTES, 'safetensors index');
    if (!isObject(json) || !isObject(json.weight_map)) {
      throw new XqFormatError(`${indexPath}: expected an object with a "weight_map" object`);
    }
    const shards = new Map<string, SafetensorsFile>();
    const byName = new Map<string, SafetensorsFile>();
    try {
      for (const [name, shard] of Object.entries(json.weight_map)) {
        if (typeof shard !== 'string' || /[\\/]/.test(shard) || shard === '..' || shard === '.' || shard === '') {
          throw new XqFormatError(`${indexPath}: weight_map['${name}'] must be a file name in the same directory, got ${JSON.stringify(shard)}`);
        }
        let f = shards.get(shard);
        if (!f) {
          const source = await files.open(shard);
          if (!source) throw new XqError('E_IO', `${indexPath}: shard '${shard}' listed for '${name}' does not exist`);
          f = await SafetensorsFile.open(source, options);
          shards.set(shard, f);
        }
        if (!f.header.tensors.has(name)) throw new XqFormatError(`${indexPath}: tensor '${name}' is mapped to '${shard}' but that shard does not contain it`);
        byName.set(name, f);
      }
    } catch (e) {
      await Promise.all([...shards.values()].map((f) => f.close()));
      throw e;
    }
    return new SafetensorsWeights(indexPath, [...shards.values()], byName);
  }

  has(name: string): boolean {
    return this.byName.has(name);
  }

  shape(name: string): number[] {
    return this.file(name).info(name).shape;
  }

  read(name: string): Promise<Float32Array> {
    return this.file(name).readFloat32(name);
  }

  /** Names of all tensors: those of the index and any a shard holds beyond them (unused, so reported at load). */
  names(): string[] {
    return [...new Set([...this.byName.keys(), ...this.files.flatMap((f) => f.names())])];
  }

  private file(name: string): SafetensorsFile {
    const f = this.byName.get(name);
    if (!f) throw new XqFormatError(`${this.source}: no tensor named '${name}'`);
    return f;
  }

  /** Close every file. */
  async close(): Promise<void> {
    await Promise.all(this.files.map((f) => f.close()));
  }
}

async function filesOf(dir: string | URL | ModelFiles, options: OpenOptions): Promise<ModelFiles> {
  return isModelFiles(dir) ? dir : (await resolveModelString(dir, options)).files;
}

/**
 * Read `config.json` (and `generation_config.json` when present) of a Hugging Face model directory: a path (Node), a
 * URL, or the model's files (`ModelFiles`, e.g. files picked in a browser).
 */
export async function readHfConfig(dir: string | URL | ModelFiles, options: OpenOptions = {}): Promise<ModelConfig> {
  const files = await filesOf(dir, options);
  const configPath = files.pathOf('config.json');
  const config = await files.open('config.json');
  if (!config) throw new XqError('E_IO', `${files.name}: no config.json (expected a Hugging Face model directory)`);
  const raw = await readJsonFile(config, CONFIG_JSON_MAX_BYTES, 'config.json');
  const genSource = await files.open('generation_config.json');
  const gen = genSource ? await readJsonFile(genSource, CONFIG_JSON_MAX_BYTES, 'generation_config.json') : undefined;
  return parseHfConfig(raw, configPath, gen);
}

/**
 * Open the safetensors weights of a model directory (a path, a URL, or `ModelFiles`):
 * `model.safetensors.index.json` (sharded) if present, else `model.safetensors`, else the only `*.safetensors` file
 * (when the files can be listed: not over HTTP).
 */
export async function openHfWeights(dir: string | URL | ModelFiles, options: OpenOptions = {}): Promise<SafetensorsWeights> {
  const files = await filesOf(dir, options);
  const index = await files.open('model.safetensors.index.json');
  if (index) {
    await index.close?.();
    return SafetensorsWeights.openIndex(files, 'model.safetensors.index.json', options);
  }
  const single = await files.open('model.safetensors');
  if (single) return SafetensorsWeights.openFile(single, options);
  const found = files.list ? (await files.list()).filter((f) => f.endsWith('.safetensors')) : undefined;
  if (found?.length === 1) {
    const only = await files.open(found[0]!);
    if (only) return SafetensorsWeights.openFile(only, options);
  }
  throw new XqError(
    'E_IO',
    found === undefined
      ? `${files.name}: no model.safetensors.index.json or model.safetensors (other *.safetensors names cannot be found without a directory listing: name the file)`
      : found.length === 0
        ? `${files.name}: no model.safetensors.index.json, model.safetensors or other *.safetensors file`
        : `${files.name}: ${found.length} *.safetensors files but no model.safetensors.index.json saying how they fit together`,
  );
}
