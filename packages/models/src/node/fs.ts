import { existsSync, readdirSync, statSync } from 'node:fs';
import { open, stat, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { XqError, XqFormatError } from '@xquant/quant';
import type { ByteSource } from '../io/byte-source.js';
import { checkFileName, type ModelFiles } from '../io/model-files.js';
import { resolveUrlModel, toUrl, type Platform } from '../io/platform.js';
import { UrlSource } from '../io/url-source.js';

/** A file on disk as a {@link ByteSource}, read through one file handle (Node entry only). */
export class NodeFileSource implements ByteSource {
  private constructor(
    /** The path as given. */
    readonly name: string,
    /** Size in bytes at open. */
    readonly size: number,
    private handle: FileHandle | undefined,
  ) {}

  /** Open `path` for reading; a missing file or a directory gives an `E_IO` error. */
  static async open(path: string): Promise<NodeFileSource> {
    let size: number;
    try {
      const s = await stat(path);
      if (!s.isFile()) throw new XqError('E_IO', `${path}: expected a file, got a directory or special file`);
      size = s.size;
    } catch (e) {
      if (XqError.isInstance(e)) throw e;
      throw new XqError('E_IO', `${path}: cannot open (${(e as Error).message})`, { cause: e });
    }
    const handle = await open(path, 'r').catch((e: unknown) => {
      throw new XqError('E_IO', `${path}: cannot open (${(e as Error).message})`, { cause: e });
    });
    return new NodeFileSource(path, size, handle);
  }

  async read(position: number, length: number, onBytes?: (bytes: number) => void): Promise<Uint8Array> {
    if (!this.handle) throw new XqError('E_STATE', `${this.name}: file already closed`);
    const out = new Uint8Array(length);
    let done = 0;
    while (done < length) {
      const { bytesRead } = await this.handle.read(out, done, length - done, position + done);
      if (bytesRead === 0) {
        throw new XqFormatError(`${this.name}: unexpected end of file after ${done} of ${length} bytes at offset ${position}; the file shrank while open`);
      }
      done += bytesRead;
    }
    onBytes?.(length);
    return out;
  }

  async close(): Promise<void> {
    const h = this.handle;
    this.handle = undefined;
    await h?.close();
  }
}

/** The files of a model directory on disk as {@link ModelFiles} (Node entry only). */
export class NodeDirectoryFiles implements ModelFiles {
  /** @param name the directory */
  constructor(readonly name: string) {}

  pathOf(file: string): string {
    return join(this.name, file);
  }

  async open(file: string): Promise<ByteSource | undefined> {
    checkFileName(this.name, file);
    const p = this.pathOf(file);
    return existsSync(p) ? NodeFileSource.open(p) : undefined;
  }

  async list(): Promise<string[]> {
    return readdirSync(this.name).filter((f) => statSync(join(this.name, f)).isFile());
  }
}

const isUrl = (s: string) => /^(https?|file):/i.test(s);

function localPath(s: string): string | undefined {
  if (/^file:/i.test(s)) return fileURLToPath(s);
  return isUrl(s) ? undefined : s;
}

/** Strings are paths; `http(s):` strings are URLs and `file:` URLs are paths. @internal */
export const nodePlatform: Platform = {
  async openSource(s, options) {
    const path = localPath(s);
    return path === undefined ? UrlSource.open(toUrl(s), options) : NodeFileSource.open(path);
  },
  async resolveModel(s, options) {
    const path = localPath(s);
    if (path === undefined) return resolveUrlModel(toUrl(s), options);
    if (!existsSync(path)) throw new XqError('E_IO', `${path}: no such file or directory`);
    if (statSync(path).isDirectory()) return { files: new NodeDirectoryFiles(path) };
    return { files: new NodeDirectoryFiles(dirname(path)), entry: basename(path) };
  },
};
