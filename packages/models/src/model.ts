import * as tf from '@tensorflow/tfjs-core';
import { XqConfigError, XqFormatError, XqNumericError, XqShapeError, XqStateError } from '@xquant/quant';
import type { AsyncKvCache, KvCache, KvCacheShape } from '@xquant/tfjs';
import type { ModelConfig } from './config.js';
import { validateModelConfig } from './config.js';
import { ropeInverseFrequencies, ropeTables } from './rope.js';
import { checkWeightsMatchConfig } from './weight-check.js';

/** Named float32 weights with Hugging Face names (`model.layers.0.self_attn.q_proj.weight`, …). */
export interface WeightSource {
  /** Human-readable origin, used in error messages. */
  readonly source: string;
  /** True when the weight exists. */
  has(name: string): boolean;
  /** Declared shape of `name` (HF orientation: `[out, in]` for projections). */
  shape(name: string): number[];
  /** The weight as float32, row-major. */
  read(name: string): Promise<Float32Array>;
  /**
   * Names of every tensor the source holds. When present, loading checks that the config uses each of them
   * (`checkWeightsMatchConfig`): a leftover tensor is a contradiction between config and weights, a typed error.
   */
  names?(): string[];
}

interface ForwardState {
  T: number;
  rows: number;
  append: boolean;
  cos: tf.Tensor2D;
  sin: tf.Tensor2D;
  /** Residual stream [T, hidden]. */
  x: tf.Tensor2D;
}

/** Which positions {@link DecoderModel.forward} returns logits for. */
export type LogitsSelection = 'last' | 'all' | { /** The last n positions. */ lastN: number };

interface LayerWeights {
  inputNorm: tf.Tensor1D;
  /** q, k, v projections, transposed and concatenated: [hidden, (nh + 2·nkv)·hd]. */
  qkv: tf.Tensor2D;
  qkvBias?: tf.Tensor1D;
  o: tf.Tensor2D;
  oBias?: tf.Tensor1D;
  postNorm: tf.Tensor1D;
  /** gate and up projections, transposed and concatenated: [hidden, 2·intermediate]. */
  gateUp: tf.Tensor2D;
  gateUpBias?: tf.Tensor1D;
  down: tf.Tensor2D;
  downBias?: tf.Tensor1D;
}

function checkFinite(data: Float32Array, name: string, source: string): void {
  for (let i = 0; i < data.length; i++) {
    const v = data[i]!;
    if (v - v !== 0) throw new XqNumericError(`${source}: weight '${name}' has a non-finite value (${v}) at flat index ${i}`);
  }
}

/**
 * A decoder-only Llama / Qwen2 model on TensorFlow.js (float32): embedding, RMSNorm, RoPE, GQA attention
 * through a `KvCache`, SwiGLU MLP, tied or untied output projection. Runs on the active tfjs backend.
 */
export class DecoderModel {
  private disposed = false;
  private readonly invFreq: Float64Array;

  private constructor(
    /** The normalised model configuration. */
    readonly config: ModelConfig,
    private readonly embed: tf.Tensor2D,
    private readonly layers: LayerWeights[],
    private readonly finalNorm: tf.Tensor1D,
    /** Output projection [hidden, vocab]: untied weights, or a transposed copy of `embed` (tied, on wasm); else `embed`ᵀ is used. */
    private readonly lmHead: tf.Tensor2D | undefined,
  ) {
    this.invFreq = ropeInverseFrequencies(config.headDim, config.ropeTheta, config.ropeScaling);
  }

  /** Shape of the KV cache this model needs (pass it to `createKvCache`). */
  get cacheShape(): KvCacheShape {
    return { layers: this.config.numLayers, kvHeads: this.config.numKvHeads, headDim: this.config.headDim };
  }

  /**
   * Build a model from weights with Hugging Face names. Every weight's shape is checked against `config`
   * and its values must be finite; the float32 data go straight to tfjs tensors, one weight at a time. A tensor the
   * config does not use (more layers, biases, an untied `lm_head` under tied embeddings) is an `E_CONFIG` error, see
   * `checkWeightsMatchConfig`.
   */
  static async fromWeights(config: ModelConfig, weights: WeightSource): Promise<DecoderModel> {
    validateModelConfig(config, weights.source);
    await checkWeightsMatchConfig(config, weights);
    const c = config;
    const created: tf.Tensor[] = [];
    const read = async (name: string, shape: number[]): Promise<Float32Array> => {
      if (!weights.has(name)) throw new XqFormatError(`${weights.source}: missing weight '${name}' (expected shape [${shape.join(', ')}])`);
      const got = weights.shape(name);
      if (got.length !== shape.length || got.some((d, i) => d !== shape[i])) {
        throw new XqShapeError(`${weights.source}: weight '${name}' has shape [${got.join(', ')}], expected [${shape.join(', ')}]`);
      }
      const data = await weights.read(name);
      if (data.length !== shape.reduce((a, b) => a * b, 1)) {
        throw new XqShapeError(`${weights.source}: weight '${name}' has ${data.length} values, expected ${shape.join('×')}`);
      }
      checkFinite(data, name, weights.source);
      return data;
    };
    const keep = <T extends tf.Tensor>(t: T): T => {
      created.push(t);
      return t;
    };
    const vec = async (name: string, n: number) => keep(tf.tensor1d(await read(name, [n]), 'float32'));
    /** Read [out, in] projections, stack them along `out` and store the transpose [in, Σout] (fast on wasm). */
    const projT = async (names: string[], rows: number[], cols: number): Promise<tf.Tensor2D> => {
      const total = rows.reduce((a, b) => a + b, 0);
      const out = new Float32Array(total * cols);
      let at = 0;
      for (let n = 0; n < names.length; n++) {
        const d = await read(names[n]!, [rows[n]!, cols]);
        const r = rows[n]!;
        for (let i = 0; i < r; i++) {
          const src = i * cols;
          for (let j = 0; j < cols; j++) out[j * total + at + i] = d[src + j]!;
        }
        at += r;
      }
      return keep(tf.tensor2d(out, [cols, total], 'float32'));
    };
    const stackVec = async (names: string[], sizes: number[]): Promise<tf.Tensor1D> => {
      const out = new Float32Array(sizes.reduce((a, b) => a + b, 0));
      let at = 0;
      for (let i = 0; i < names.length; i++) {
        out.set(await read(names[i]!, [sizes[i]!]), at);
        at += sizes[i]!;
      }
      return keep(tf.tensor1d(out, 'float32'));
    };
    try {
      const H = c.hiddenSize;
      const qd = c.numHeads * c.headDim;
      const kvd = c.numKvHeads * c.headDim;
      const I = c.intermediateSize;
      const embed = keep(tf.tensor2d(await read('model.embed_tokens.weight', [c.vocabSize, H]), [c.vocabSize, H], 'float32'));
      const layers: LayerWeights[] = [];
      for (let l = 0; l < c.numLayers; l++) {
        const p = `model.layers.${l}.`;
        const a = `${p}self_attn.`;
        const m = `${p}mlp.`;
        const layer: LayerWeights = {
          inputNorm: await vec(`${p}input_layernorm.weight`, H),
          qkv: await projT([`${a}q_proj.weight`, `${a}k_proj.weight`, `${a}v_proj.weight`], [qd, kvd, kvd], H),
          o: await projT([`${a}o_proj.weight`], [H], qd),
          postNorm: await vec(`${p}post_attention_layernorm.weight`, H),
          gateUp: await projT([`${m}gate_proj.weight`, `${m}up_proj.weight`], [I, I], H),
          down: await projT([`${m}down_proj.weight`], [H], I),
        };
        if (c.attentionBias) layer.qkvBias = await stackVec([`${a}q_proj.bias`, `${a}k_proj.bias`, `${a}v_proj.bias`], [qd, kvd, kvd]);
        if (c.outputBias) layer.oBias = await vec(`${a}o_proj.bias`, H);
        if (c.mlpBias) {
          layer.gateUpBias = await stackVec([`${m}gate_proj.bias`, `${m}up_proj.bias`], [I, I]);
          layer.downBias = await vec(`${m}down_proj.bias`, H);
        }
        layers.push(layer);
      }
      const finalNorm = await vec('model.norm.weight', H);
      let lmHead: tf.Tensor2D | undefined;
      if (!c.tieWordEmbeddings) {
        if (!weights.has('lm_head.weight')) {
          throw new XqFormatError(
            `${weights.source}: missing weight 'lm_head.weight' while tie_word_embeddings is false (expected shape [${c.vocabSize}, ${H}])`,
          );
        }
        lmHead = await projT(['lm_head.weight'], [c.vocabSize], H);
      } else if (tf.getBackend() === 'wasm') {
        // tfjs-wasm multiplies by a transposed operand in a plain loop, ~10× slower than its XNNPACK path: keep embedᵀ
        lmHead = keep(tf.transpose(embed) as tf.Tensor2D);
      }
      return new DecoderModel(c, embed, layers, finalNorm, lmHead);
    } catch (e) {
      for (const t of created) t.dispose();
      throw e;
    }
  }

  private rmsNorm(x: tf.Tensor2D, weight: tf.Tensor1D): tf.Tensor2D {
    const variance = tf.mean(tf.square(x), -1, true);
    return tf.mul(tf.mul(x, tf.rsqrt(tf.add(variance, this.config.rmsNormEps))), weight);
  }

  /** Apply RoPE (half-split / NeoX layout, as transformers) to x: [heads, T, headDim]. */
  private rope(x: tf.Tensor3D, cos: tf.Tensor2D, sin: tf.Tensor2D): tf.Tensor3D {
    const [h, t, d] = x.shape;
    const half = d / 2;
    const x1 = tf.slice(x, [0, 0, 0], [h, t, half]);
    const x2 = tf.slice(x, [0, 0, half], [h, t, half]);
    return tf.concat([tf.sub(tf.mul(x1, cos), tf.mul(x2, sin)), tf.add(tf.mul(x2, cos), tf.mul(x1, sin))], 2) as tf.Tensor3D;
  }

  private checkInputs(ids: ArrayLike<number>, cache: KvCache): void {
    if (this.disposed) throw new XqStateError('E_STATE', 'model was disposed');
    if (ids.length === 0) throw new XqShapeError('forward: ids must hold at least one token, got 0');
    const { vocabSize } = this.config;
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i]!;
      if (!Number.isInteger(id) || id < 0 || id >= vocabSize) {
        throw new XqConfigError('E_CONFIG', `forward: token id ${id} at index ${i} is outside the vocabulary [0, ${vocabSize})`);
      }
    }
    const s = cache.shape;
    const want = this.cacheShape;
    if (s.layers !== want.layers || s.kvHeads !== want.kvHeads || s.headDim !== want.headDim) {
      throw new XqShapeError(
        `forward: cache shape {layers ${s.layers}, kvHeads ${s.kvHeads}, headDim ${s.headDim}} does not match the model {layers ${want.layers}, kvHeads ${want.kvHeads}, headDim ${want.headDim}}`,
      );
    }
  }

  private begin(ids: ArrayLike<number>, cache: KvCache, logits: LogitsSelection): ForwardState {
    this.checkInputs(ids, cache);
    const c = this.config;
    const T = ids.length;
    const rows = logits === 'last' ? 1 : logits === 'all' ? T : logits.lastN;
    if (!Number.isInteger(rows) || rows < 1 || rows > T) {
      throw new XqShapeError(`forward: lastN must be an integer in [1, ${T}], got ${rows}`);
    }
    const start = cache.seqLength(0);
    for (let l = 1; l < c.numLayers; l++) {
      if (cache.seqLength(l) !== start) {
        throw new XqStateError('E_STATE', `forward: cache layers disagree on length (layer 0 holds ${start} tokens, layer ${l} ${cache.seqLength(l)}); reset the cache`);
      }
    }
    const { cos, sin } = ropeTables(this.invFreq, start, T);
    const half = c.headDim / 2;
    return tf.tidy(() => ({
      T,
      rows,
      append: T === 1 && start > 0,
      cos: tf.tensor2d(cos, [T, half]),
      sin: tf.tensor2d(sin, [T, half]),
      x: tf.gather(this.embed, tf.tensor1d(Array.from(ids), 'int32')) as tf.Tensor2D,
    }));
  }

  /** Attention inputs of layer `l`: q [nh, T, hd] and k, v [nkv, T, hd] after RoPE. */
  private projectQkv(l: number, st: ForwardState): { q: tf.Tensor3D; k: tf.Tensor3D; v: tf.Tensor3D } {
    const c = this.config;
    const { T } = st;
    const w = this.layers[l]!;
    const qd = c.numHeads * c.headDim;
    const kvd = c.numKvHeads * c.headDim;
    return tf.tidy(() => {
      const h = this.rmsNorm(st.x, w.inputNorm);
      let qkv = tf.matMul(h, w.qkv);
      if (w.qkvBias) qkv = tf.add(qkv, w.qkvBias);
      const heads = (from: number, n: number): tf.Tensor3D =>
        tf.transpose(tf.reshape(tf.slice(qkv, [0, from], [T, n * c.headDim]), [T, n, c.headDim]), [1, 0, 2]);
      return {
        q: this.rope(heads(0, c.numHeads), st.cos, st.sin),
        k: this.rope(heads(qd, c.numKvHeads), st.cos, st.sin),
        v: heads(qd + kvd, c.numKvHeads),
      };
    });
  }

  /** Residual stream after layer `l` given its attention output [nh, T, hd]. */
  private finishLayer(l: number, st: ForwardState, attn: tf.Tensor3D): tf.Tensor2D {
    const c = this.config;
    const { T } = st;
    const w = this.layers[l]!;
    return tf.tidy(() => {
      let o = tf.matMul(tf.reshape(tf.transpose(attn, [1, 0, 2]), [T, c.numHeads * c.headDim]), w.o);
      if (w.oBias) o = tf.add(o, w.oBias);
      const x = tf.add(st.x, o) as tf.Tensor2D;
      const h = this.rmsNorm(x, w.postNorm);
      let gu = tf.matMul(h, w.gateUp);
      if (w.gateUpBias) gu = tf.add(gu, w.gateUpBias);
      const gate = tf.slice(gu, [0, 0], [T, c.intermediateSize]);
      const up = tf.slice(gu, [0, c.intermediateSize], [T, c.intermediateSize]);
      let mlp = tf.matMul(tf.mul(tf.mul(gate, tf.sigmoid(gate)), up), w.down);
      if (w.downBias) mlp = tf.add(mlp, w.downBias);
      return tf.add(x, mlp) as tf.Tensor2D;
    });
  }

  private logits(st: ForwardState): tf.Tensor2D {
    return tf.tidy(() => {
      const { T, rows } = st;
      const tail = rows === T ? st.x : tf.slice(st.x, [T - rows, 0], [rows, this.config.hiddenSize]);
      const normed = this.rmsNorm(tail, this.finalNorm);
      return (this.lmHead ? tf.matMul(normed, this.lmHead) : tf.matMul(normed, this.embed, false, true)) as tf.Tensor2D;
    });
  }

  private advance(l: number, st: ForwardState, attn: tf.Tensor3D): void {
    try {
      const next = this.finishLayer(l, st, attn);
      st.x.dispose();
      st.x = next;
    } finally {
      attn.dispose();
    }
  }

  private static release(st: ForwardState): void {
    st.x.dispose();
    st.cos.dispose();
    st.sin.dispose();
  }

  /**
   * Run `ids` (the next tokens after what `cache` holds) through the model, appending their K/V to `cache`.
   * Returns logits `[rows, vocab]` for the last position (default), all positions, or the last `n`.
   * Synchronous; each stage runs in its own `tf.tidy` and the cache is called outside them, so a cache may
   * keep (copies of) its inputs without `tf.keep`. Only the returned tensor remains: dispose it after reading.
   * The K/V tensors handed to the cache are disposed after the call, so a cache must copy what it keeps.
   */
  forward(ids: ArrayLike<number>, cache: KvCache, logits: LogitsSelection = 'last'): tf.Tensor2D {
    const st = this.begin(ids, cache, logits);
    try {
      for (let l = 0; l < this.config.numLayers; l++) {
        const { q, k, v } = this.projectQkv(l, st);
        let attn: tf.Tensor3D;
        try {
          if (st.append) cache.append(l, k, v);
          else cache.prefill(l, k, v);
          attn = cache.attend(l, q);
        } finally {
          q.dispose();
          k.dispose();
          v.dispose();
        }
        this.advance(l, st, attn);
      }
      return this.logits(st);
    } finally {
      DecoderModel.release(st);
    }
  }

  /**
   * {@link DecoderModel.forward} for caches that must read their inputs asynchronously (WebGPU): uses the
   * cache's `prefillAsync`/`appendAsync` when it has them, else the synchronous calls.
   */
  async forwardAsync(ids: ArrayLike<number>, cache: KvCache, logits: LogitsSelection = 'last'): Promise<tf.Tensor2D> {
    const st = this.begin(ids, cache, logits);
    const asyncCache = cache as Partial<AsyncKvCache> & KvCache;
    try {
      for (let l = 0; l < this.config.numLayers; l++) {
        const { q, k, v } = this.projectQkv(l, st);
        let attn: tf.Tensor3D;
        try {
          if (st.append) {
            if (asyncCache.appendAsync) await asyncCache.appendAsync(l, k, v);
            else cache.append(l, k, v);
          } else if (asyncCache.prefillAsync) await asyncCache.prefillAsync(l, k, v);
          else cache.prefill(l, k, v);
          attn = cache.attend(l, q);
        } finally {
          q.dispose();
          k.dispose();
          v.dispose();
        }
        this.advance(l, st, attn);
      }
      return this.logits(st);
    } finally {
      DecoderModel.release(st);
    }
  }

  /**
   * Run several sequences at once, each through its own cache: `ids[b]` are the next tokens of sequence `b`
   * (every sequence must bring the same number of tokens; their positions may differ). Weight matmuls run on
   * all sequences together, attention per sequence through `caches[b]`. Returns logits `[B·rows, vocab]`,
   * sequence-major (`rows` per sequence as in {@link DecoderModel.forward}). The same cache must not appear twice.
   */
  forwardBatch(ids: ArrayLike<number>[], caches: KvCache[], logits: LogitsSelection = 'last'): tf.Tensor2D {
    if (ids.length === 0) throw new XqShapeError('forwardBatch: needs at least one sequence, got 0');
    if (ids.length !== caches.length) {
      throw new XqShapeError(`forwardBatch: ${ids.length} sequences but ${caches.length} caches`);
    }
    if (new Set(caches).size !== caches.length) throw new XqStateError('E_STATE', 'forwardBatch: the same cache appears twice');
    const T = ids[0]!.length;
    ids.forEach((seq, b) => {
      if (seq.length !== T) throw new XqShapeError(`forwardBatch: sequence ${b} has ${seq.length} tokens, sequence 0 has ${T}`);
    });
    const B = ids.length;
    const states = ids.map((seq, b) => this.begin(seq, caches[b]!, logits));
    const c = this.config;
    const { rows } = states[0]!;
    const st: ForwardState = tf.tidy(() => ({
      T: B * T,
      rows,
      append: false,
      cos: B === 1 ? tf.clone(states[0]!.cos) : (tf.concat(states.map((s) => s.cos), 0) as tf.Tensor2D),
      sin: B === 1 ? tf.clone(states[0]!.sin) : (tf.concat(states.map((s) => s.sin), 0) as tf.Tensor2D),
      x: B === 1 ? tf.clone(states[0]!.x) : (tf.concat(states.map((s) => s.x), 0) as tf.Tensor2D),
    }));
    for (const s of states) DecoderModel.release(s);
    try {
      for (let l = 0; l < c.numLayers; l++) {
        const { q, k, v } = this.projectQkv(l, st);
        const outs: tf.Tensor3D[] = [];
        let attn: tf.Tensor3D;
        try {
          for (let b = 0; b < B; b++) {
            const part = (x: tf.Tensor3D) => tf.slice(x, [0, b * T, 0], [x.shape[0], T, c.headDim]) as tf.Tensor3D;
            const qb = part(q);
            const kb = part(k);
            const vb = part(v);
            try {
              if (states[b]!.append) caches[b]!.append(l, kb, vb);
              else caches[b]!.prefill(l, kb, vb);
              outs.push(caches[b]!.attend(l, qb));
            } finally {
              qb.dispose();
              kb.dispose();
              vb.dispose();
            }
          }
          attn = B === 1 ? outs[0]! : (tf.concat(outs, 1) as tf.Tensor3D);
        } finally {
          q.dispose();
          k.dispose();
          v.dispose();
          if (B > 1) for (const o of outs) o.dispose();
        }
        this.advance(l, st, attn);
      }
      if (rows === T || B === 1) return this.logits({ ...st, T: B * T, rows: B * rows });
      return tf.tidy(() => {
        const pick: number[] = [];
        for (let b = 0; b < B; b++) for (let r = T - rows; r < T; r++) pick.push(b * T + r);
        const sel = tf.gather(st.x, tf.tensor1d(pick, 'int32')) as tf.Tensor2D;
        const normed = this.rmsNorm(sel, this.finalNorm);
        return (this.lmHead ? tf.matMul(normed, this.lmHead) : tf.matMul(normed, this.embed, false, true)) as tf.Tensor2D;
      });
    } finally {
      DecoderModel.release(st);
    }
  }

  /** Free every weight tensor; the model is unusable afterwards. */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    const all = new Set<tf.Tensor>([this.embed, this.finalNorm]);
    if (this.lmHead) all.add(this.lmHead);
    for (const l of this.layers) {
      for (const t of Object.values(l)) if (t) all.add(t as tf.Tensor);
    }
    for (const t of all) t.dispose();
  }
}
