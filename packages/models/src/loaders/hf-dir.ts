import { existsSync, readdirSync, statSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { XqError, XqFormatError } from '@xquant/quant';
import type { ModelConfig } from '../config.js';
import { parseHfConfig } from '../config.js';
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

  /** Open a single `.safetensors` file. */
  static async openFile(path: string): Promise<SafetensorsWeights> {
    const f = await SafetensorsFile.open(path);
    return new SafetensorsWeights(path, [f], new Map(f.names().map((n) => [n, f])));
  }

  /**
   * Open the shards listed by a `model.safetensors.index.json`. Shard names must be plain file names in the
   * index's directory, and every mapped tensor must be present in its shard.
   */
  static async openIndex(indexPath: string): Promise<SafetensorsWeights> {
    const json = await readJsonFile(indexPath, CONFIG_JSON_MAX_BYTES, 'safetensors index');
    if (!isObject(json) || !isObject(json.weight_map)) {
      throw new XqFormatError(`${indexPath}: expected an object with a "weight_map" object`);
    }
    const dir = dirname(indexPath);
    const shards = new Map<string, SafetensorsFile>();
    const byName = new Map<string, SafetensorsFile>();
    try {
      for (const [name, shard] of Object.entries(json.weight_map)) {
        if (typeof shard !== 'string' || shard !== basename(shard) || shard === '..' || shard === '.' || shard === '') {
          throw new XqFormatError(`${indexPath}: weight_map['${name}'] must be a file name in the same directory, got ${JSON.stringify(shard)}`);
        }
        let f = shards.get(shard);
        if (!f) {
          const p = join(dir, shard);
          if (!existsSync(p)) throw new XqError('E_IO', `${indexPath}: shard '${shard}' listed for '${name}' does not exist`);
          f = await SafetensorsFile.open(p);
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

  /** Names of all tensors. */
  names(): string[] {
    return [...this.byName.keys()];
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

/** Read `config.json` (and `generation_config.json` when present) of a Hugging Face model directory. */
export async function readHfConfig(dir: string): Promise<ModelConfig> {
  const configPath = join(dir, 'config.json');
  if (!existsSync(configPath)) throw new XqError('E_IO', `${dir}: no config.json (expected a Hugging Face model directory)`);
  const raw = await readJsonFile(configPath, CONFIG_JSON_MAX_BYTES, 'config.json');
  const genPath = join(dir, 'generation_config.json');
  const gen = existsSync(genPath) ? await readJsonFile(genPath, CONFIG_JSON_MAX_BYTES, 'generation_config.json') : undefined;
  return parseHfConfig(raw, configPath, gen);
}

/**
 * Open the safetensors weights of a model directory: `model.safetensors.index.json` (sharded) if present,
 * else `model.safetensors`, else the only `*.safetensors` file.
 */
export async function openHfWeights(dir: string): Promise<SafetensorsWeights> {
  const index = join(dir, 'model.safetensors.index.json');
  if (existsSync(index)) return SafetensorsWeights.openIndex(index);
  const single = join(dir, 'model.safetensors');
  if (existsSync(single)) return SafetensorsWeights.openFile(single);
  const found = readdirSync(dir).filter((f) => f.endsWith('.safetensors') && statSync(join(dir, f)).isFile());
  if (found.length === 1) return SafetensorsWeights.openFile(join(dir, found[0]!));
  throw new XqError(
    'E_IO',
    found.length === 0
      ? `${dir}: no model.safetensors.index.json, model.safetensors or other *.safetensors file`
      : `${dir}: ${found.length} *.safetensors files but no model.safetensors.index.json saying how they fit together`,
  );
}
