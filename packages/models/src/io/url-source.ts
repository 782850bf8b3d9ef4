import { XqError } from '@xquant/quant';
import type { ByteSource } from './byte-source.js';

/** Largest byte range {@link UrlSource} asks for in one request by default (16 MiB); larger reads become several requests. */
export const URL_MAX_RANGE_BYTES = 16 * 1024 * 1024;

/** Options of {@link UrlSource.open}, and of every loader that opens files (`OpenOptions`). */
export interface UrlSourceOptions {
  /** The `fetch` to use (default `globalThis.fetch`), e.g. one that adds credentials. */
  fetch?: typeof fetch;
  /** Extra request headers (e.g. `Authorization`). */
  headers?: Record<string, string>;
  /** Largest byte range asked for in one request (default {@link URL_MAX_RANGE_BYTES}). */
  maxRangeBytes?: number;
  /** Aborts the pending request and every later read. */
  signal?: AbortSignal;
  /**
   * Told how many bytes arrived, as they arrive: every byte a loader reads (progress). With a server that ignores byte
   * ranges, the whole file arrives at open.
   */
  onBytes?: (bytes: number) => void;
}

/** What probing a URL found. @internal */
type Probe = { kind: 'missing'; status: number } | { kind: 'ranges'; size: number } | { kind: 'whole'; bytes: Uint8Array };

function httpError(url: string, res: Response, what: string): XqError {
  return new XqError('E_IO', `${url}: ${what}: HTTP ${res.status}${res.statusText ? ` ${res.statusText}` : ''}`);
}

async function send(url: string, o: UrlSourceOptions, range: string, what: string): Promise<Response> {
  const f = o.fetch ?? globalThis.fetch;
  if (typeof f !== 'function') throw new XqError('E_IO', `${url}: no fetch() in this environment; pass options.fetch`);
  try {
    return await f(url, { headers: { ...o.headers, Range: `bytes=${range}` }, signal: o.signal });
  } catch (e) {
    if ((e as Error)?.name === 'AbortError') throw e;
    throw new XqError('E_IO', `${url}: ${what}: request failed (${(e as Error).message})`, { cause: e });
  }
}

/** Read a response body into `out` at `offset`, streaming (progress per chunk); returns the bytes written. */
async function readBody(res: Response, out: Uint8Array | undefined, offset: number, limit: number, onBytes?: (n: number) => void): Promise<{ n: number; chunks?: Uint8Array[] }> {
  const chunks: Uint8Array[] = [];
  let n = 0;
  const reader = res.body?.getReader();
  if (!reader) {
    const all = new Uint8Array(await res.arrayBuffer());
    if (out) out.set(all.subarray(0, Math.max(0, Math.min(all.length, limit))), offset);
    onBytes?.(all.length);
    return out ? { n: all.length } : { n: all.length, chunks: [all] };
  }
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (out) {
      if (n + value.length > limit) {
        await reader.cancel();
        return { n: n + value.length };
      }
      out.set(value, offset + n);
    } else chunks.push(value);
    n += value.length;
    onBytes?.(value.length);
  }
  return out ? { n } : { n, chunks };
}

function concat(chunks: Uint8Array[], n: number): Uint8Array {
  const out = new Uint8Array(n);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

async function probe(url: string, o: UrlSourceOptions, htmlIsMissing: boolean): Promise<Probe> {
  const res = await send(url, o, '0-0', 'probing size and range support');
  // a single-page-app fallback answers any unknown name with the index page
  const html = htmlIsMissing && /^text\/html\b/i.test(res.headers.get('content-type') ?? '');
  if (res.status === 404 || res.status === 410 || (res.ok && html)) {
    await res.body?.cancel();
    return { kind: 'missing', status: res.status };
  }
  if (res.status === 416) {
    // nothing at offset 0: an empty file ("bytes */0")
    await res.body?.cancel();
    return { kind: 'ranges', size: 0 };
  }
  if (res.status === 206) {
    const m = /^bytes\s+(\d+)-(\d+)\/(\d+)\s*$/i.exec(res.headers.get('content-range') ?? '');
    await res.body?.cancel();
    if (!m) throw new XqError('E_IO', `${url}: the server answered a byte-range request without a usable Content-Range (${JSON.stringify(res.headers.get('content-range'))}), so the file size is unknown`);
    const size = Number(m[3]);
    if (!Number.isSafeInteger(size)) throw new XqError('E_IO', `${url}: Content-Range reports an impossible size ${m[3]}`);
    return { kind: 'ranges', size };
  }
  if (res.ok) {
    // the server ignores byte ranges: it is sending the whole file, so keep it
    const { n, chunks } = await readBody(res, undefined, 0, Infinity, o.onBytes);
    return { kind: 'whole', bytes: concat(chunks!, n) };
  }
  await res.body?.cancel();
  throw httpError(url, res, 'cannot fetch');
}

/**
 * A {@link ByteSource} over a URL: reads are HTTP byte-range requests (`Range: bytes=a-b`, at most `maxRangeBytes`
 * each), so a loader fetches the header first and then one tensor at a time, never the whole shard at once. A server
 * that ignores ranges (answers 200) is handled too: the whole file is downloaded once, at open, and read from memory.
 * Every response is checked (status, `Content-Range`, length); failures are `XqError` with code `E_IO`.
 */
export class UrlSource implements ByteSource {
  private constructor(
    /** The absolute URL. */
    readonly name: string,
    /** Size in bytes (from `Content-Range`, or the downloaded body). */
    readonly size: number,
    private readonly options: UrlSourceOptions,
    private readonly whole: Uint8Array | undefined,
  ) {}

  /** True when reads are byte-range requests (false: the server ignored ranges and the file was downloaded at open). */
  get rangeRequests(): boolean {
    return this.whole === undefined;
  }

  /** Open `url` (one small range request learns the size); a missing file (404/410) or any other failure throws `E_IO`. */
  static async open(url: string | URL, options: UrlSourceOptions = {}): Promise<UrlSource> {
    const s = await UrlSource.openIfExists(url, options);
    if (!s) throw new XqError('E_IO', `${String(url)}: not found (HTTP 404)`);
    return s;
  }

  /**
   * As {@link UrlSource.open}, but resolves to undefined when the server says the file does not exist (404/410), or,
   * with `htmlIsMissing`, answers with an HTML page (a single-page-app fallback serving index.html for unknown names).
   */
  static async openIfExists(url: string | URL, options: UrlSourceOptions = {}, htmlIsMissing = false): Promise<UrlSource | undefined> {
    const href = String(url);
    const max = options.maxRangeBytes ?? URL_MAX_RANGE_BYTES;
    if (!Number.isSafeInteger(max) || max < 1) throw new XqError('E_CONFIG', `maxRangeBytes must be a positive integer; got ${String(max)}`);
    const p = await probe(href, options, htmlIsMissing);
    if (p.kind === 'missing') return undefined;
    if (p.kind === 'whole') return new UrlSource(href, p.bytes.length, options, p.bytes);
    return new UrlSource(href, p.size, options, undefined);
  }

  async read(position: number, length: number, onBytes?: (bytes: number) => void): Promise<Uint8Array> {
    if (this.whole) {
      onBytes?.(length);
      return this.whole.subarray(position, position + length);
    }
    const out = new Uint8Array(length);
    const max = this.options.maxRangeBytes ?? URL_MAX_RANGE_BYTES;
    for (let done = 0; done < length; ) {
      const n = Math.min(max, length - done);
      const from = position + done;
      const range = `${from}-${from + n - 1}`;
      const res = await send(this.name, this.options, range, `bytes ${range}`);
      if (res.status !== 206) {
        await res.body?.cancel();
        throw res.ok
          ? new XqError('E_IO', `${this.name}: asked for bytes ${range} but the server sent the whole file (HTTP ${res.status}); it stopped honouring byte ranges`)
          : httpError(this.name, res, `bytes ${range}`);
      }
      const start = /^bytes\s+(\d+)-/i.exec(res.headers.get('content-range') ?? '')?.[1];
      if (start !== undefined && Number(start) !== from) {
        await res.body?.cancel();
        throw new XqError('E_IO', `${this.name}: asked for bytes from ${from} but the server sent bytes from ${start}`);
      }
      const got = await readBody(res, out, done, n, onBytes);
      if (got.n !== n) throw new XqError('E_IO', `${this.name}: asked for bytes ${range} (${n} bytes) but received ${got.n}; the file changed or the transfer was cut`);
      done += n;
    }
    return out;
  }
}
