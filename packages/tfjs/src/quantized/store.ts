import { halfTable, halfToBits, type Precision } from '@xquant/quant';

/** Per-group scales or zero-points as stored: fp16 bit patterns (precision `'fp16'`) or float32 (`'fp32'`). */
export type StoredMeta = Uint16Array | Float32Array;

/** Allocate metadata storage for `n` groups. */
export function allocMeta(n: number, precision: Precision): StoredMeta {
  return precision === 'fp16' ? new Uint16Array(n) : new Float32Array(n);
}

/** Write float values (already representable in the storage precision) into stored metadata at `offset`. */
export function writeMeta(dst: StoredMeta, offset: number, src: ArrayLike<number>, srcOffset = 0, n = src.length - srcOffset): void {
  if (dst instanceof Uint16Array) for (let i = 0; i < n; i++) dst[offset + i] = halfToBits(src[srcOffset + i]!);
  else for (let i = 0; i < n; i++) dst[offset + i] = src[srcOffset + i]!;
}

/** Decode stored metadata to float32 (into `out`, reused when large enough). */
export function readMeta(src: StoredMeta, offset: number, n: number, out?: Float32Array): Float32Array {
  const res = out && out.length >= n ? out : new Float32Array(n);
  if (src instanceof Uint16Array) {
    const t = halfTable();
    for (let i = 0; i < n; i++) res[i] = t[src[offset + i]!]!;
  } else {
    for (let i = 0; i < n; i++) res[i] = src[offset + i]!;
  }
  return res;
}

/**
 * One flushed block of keys (a whole multiple of the residual length, here always exactly R tokens), in the reference
 * layout: `packed` `[kvHeads, headDim, tokens·bits/32]` (codes along tokens, per channel), `scale`/`zero`
 * `[kvHeads, headDim, tokens/groupSize]` (the key group size). `packed` is null when the layer borrows another layer's codes.
 */
export interface KeyBlock {
  /** Position of the block's first token. */
  readonly start: number;
  readonly tokens: number;
  readonly packed: Uint32Array | null;
  readonly scale: StoredMeta;
  readonly zero: StoredMeta;
}

/**
 * A chunk of quantized values, token-major so tokens can be added one at a time: `packed` `[capacity, kvHeads, headDim·bits/32]`,
 * `scale`/`zero` `[capacity, kvHeads, headDim/valueGroupSize]`; the first `filled` tokens are valid. `packed` is null when borrowed.
 */
export interface ValueChunk {
  readonly start: number;
  readonly capacity: number;
  filled: number;
  readonly packed: Uint32Array | null;
  readonly scale: StoredMeta;
  readonly zero: StoredMeta;
}

/**
 * Full-precision tokens of one layer, token-major `[capacity, kvHeads, headDim]` float32. The buffer is reallocated to
 * fit (never more than needed after a flush), so its byteLength is what the cache reports.
 */
export class ResidualBuffer {
  data: Float32Array;
  count = 0;
  /** Position of the first held token. */
  start = 0;
  /**
   * @param rowSize floats per token (kvHeads · headDim)
   * @param growStep tokens added per reallocation at least
   * @param keepCapacity capacity kept after a flush (the steady-state need), so decode does not reallocate each step
   */
  constructor(
    readonly rowSize: number,
    private readonly growStep: number,
    private readonly keepCapacity: number,
  ) {
    this.data = new Float32Array(0);
  }
  get capacity(): number {
    return this.data.length / this.rowSize;
  }
  /** Append `n` tokens given token-major (`[n, kvHeads, headDim]`). */
  push(src: Float32Array, n: number): void {
    const need = this.count + n;
    if (need > this.capacity) {
      // geometric growth capped at growStep tokens ahead: a huge window is not allocated before its tokens arrive
      const ahead = Math.min(this.count + this.growStep, Math.max(2 * this.capacity, 8));
      const grown = new Float32Array(Math.max(need, ahead) * this.rowSize);
      grown.set(this.data.subarray(0, this.count * this.rowSize));
      this.data = grown;
    }
    this.data.set(src.subarray(0, n * this.rowSize), this.count * this.rowSize);
    this.count = need;
  }
  /** A copy of the oldest `n` tokens (token-major); the buffer is unchanged. */
  peek(n: number): Float32Array {
    return this.data.slice(0, n * this.rowSize);
  }
  /** Remove the oldest `n` tokens and return a copy of them (token-major). */
  shift(n: number): Float32Array {
    const out = this.peek(n);
    this.drop(n);
    return out;
  }
  /** Remove the oldest `n` tokens. */
  drop(n: number): void {
    this.data.copyWithin(0, n * this.rowSize, this.count * this.rowSize);
    this.count -= n;
    this.start += n;
    // Give memory back after a flush / a large prefill: keep at most max(count, keepCapacity) tokens.
    const keep = Math.max(this.count, this.keepCapacity);
    if (this.capacity > keep) this.data = this.data.slice(0, keep * this.rowSize);
  }
  clear(): void {
    this.data = new Float32Array(0);
    this.count = 0;
    this.start = 0;
  }
}

/** `[n, heads, d]` (token-major) → `[heads, n, d]`. */
export function tokenMajorToHeadMajor(x: Float32Array, n: number, heads: number, d: number): Float32Array {
  const out = new Float32Array(n * heads * d);
  for (let t = 0; t < n; t++) {
    for (let h = 0; h < heads; h++) out.set(x.subarray((t * heads + h) * d, (t * heads + h + 1) * d), (h * n + t) * d);
  }
  return out;
}

/** `[heads, n, d]` → `[n, heads, d]` (token-major). */
export function headMajorToTokenMajor(x: ArrayLike<number>, n: number, heads: number, d: number, out = new Float32Array(n * heads * d)): Float32Array {
  for (let h = 0; h < heads; h++) {
    for (let t = 0; t < n; t++) {
      const src = (h * n + t) * d;
      const dst = (t * heads + h) * d;
      for (let i = 0; i < d; i++) out[dst + i] = x[src + i]!;
    }
  }
  return out;
}
