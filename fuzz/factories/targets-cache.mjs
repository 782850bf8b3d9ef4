// Fuzz target for the KV-cache state machine of @xquant/tfjs (issue 13): random prefill/append/attend/reset/dispose
// sequences, synchronous and asynchronous (bursts of un-awaited appendAsync, with reset/dispose/sync calls in between),
// checked after every step against a float64 model of the cache. Library-agnostic: pass the modules in.
import fc from 'fast-check';
import { FLT_MAX, FP16_MAX, FuzzFailure, fill, typedCode } from './common.mjs';

/** Strategies and options the target draws from (every layer quantized, or all full precision). */
const CONFIGS = [
  { id: 'full', options: undefined, quantized: false },
  { id: 'kivi-2', options: { residualLength: 32 }, quantized: true },
  { id: 'kivi-2', options: { residualLength: 16, groupSize: 16 }, quantized: true },
  { id: 'kivi-1', options: { residualLength: 32 }, quantized: true },
  { id: 'asymkv-1.5', options: { residualLength: 16, groupSize: 16 }, quantized: true },
  { id: 'xquant-1.38', options: { residualLength: 16, groupSize: 16 }, quantized: true },
  { id: 'xquant-1.38', options: { residualLength: 32 }, quantized: true },
];
const D = 32;
const LAYERS = 2;
const ATTENTION_BOUND = 1e38;
/** Data classes: [palette of magnitudes] the K/V/q blocks are drawn from. */
const PALETTES = [
  [-1.5, -0.7, -0.1, 0, 0.2, 0.9, 1.3, 2.4],
  [-60000, -1000, 0, 3, 1000, 65504],
  [1e-6, -3e-6, 0, 5.96e-8, -1e-7],
  [0.5, 6, 6.5, -0.25],
];
/** Poison values injected at one position: [value, rejected by the quantized caches, rejected by full]. */
const POISON = [[NaN, true, true], [Infinity, true, true], [-Infinity, true, true], [70000, true, false], [1e38, true, false]];

const block = fc.record({
  palette: fc.nat(PALETTES.length - 1),
  seed: fc.nat(),
  poison: fc.oneof({ weight: 12, arbitrary: fc.constant(null) }, { weight: 1, arbitrary: fc.nat(POISON.length - 1) }),
});
const command = fc.oneof(
  { weight: 12, arbitrary: fc.record({ op: fc.constant('prefill'), n: fc.integer({ min: 1, max: 40 }), k: block, v: block }) },
  { weight: 20, arbitrary: fc.record({ op: fc.constant('append'), async: fc.boolean(), k: block, v: block }) },
  { weight: 20, arbitrary: fc.record({ op: fc.constant('attend'), nq: fc.integer({ min: 1, max: 3 }), q: block, qScale: fc.constantFrom(1, 0.01, 30) }) },
  {
    weight: 8,
    arbitrary: fc.record({
      op: fc.constant('burst'),
      k: fc.array(block, { minLength: 1, maxLength: 3 }),
      then: fc.constantFrom('await', 'reset', 'dispose', 'sync-append', 'attend'),
    }),
  },
  { weight: 3, arbitrary: fc.record({ op: fc.constant('reset') }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('dispose') }) },
);

/**
 * @param {{ tf: typeof import('@tensorflow/tfjs-core'), tfjs: typeof import('@xquant/tfjs'), quant: typeof import('@xquant/quant') }} libs
 *   tf must have a backend with synchronous reads set (cpu).
 * @returns {{ name: string, arbitrary: import('fast-check').Arbitrary<any>, check(input: any): Promise<void> }[]}
 */
export function cacheTargets({ tf, tfjs, quant }) {
  const isXq = (e) => quant.XqError.isInstance(e);
  /** Outcome counts over every case run (`op:success` / `op:E_CODE`), for reports. */
  const stats = {};
  const count = (key) => (stats[key] = (stats[key] ?? 0) + 1);

  async function run({ config, kvHeads, rep, maxTokens, commands }) {
    const cfg = CONFIGS[config];
    const H = kvHeads, QH = kvHeads * rep;
    const base = tf.memory().numTensors;
    const shape = { layers: LAYERS, kvHeads: H, headDim: D, ...(maxTokens ? { maxTokens } : {}) };
    const cache = tfjs.createKvCache(cfg.id, shape, cfg.options);
    // the model: per layer, head-major token lists of K and V (float32 values as given)
    let model = { tokens: 0, k: [], v: [], maxK: 0, maxV: 0 };
    let disposed = false;
    const fail = (kind, msg, extra) => {
      throw new FuzzFailure(kind, `${cfg.id} ${JSON.stringify(cfg.options ?? {})}: ${msg}`, extra);
    };
    /** Runs `f`, expecting the typed error `code` (null: success); returns f's result. */
    const expectCode = (code, what, f) => {
      let r;
      try {
        r = f();
        count(`${what.split(' ')[2] ?? what}:success`);
      } catch (e) {
        const got = typedCode(e, isXq);
        count(`${what.split(' ')[2] ?? what}:${got}`);
        if (got !== code) fail(code === null ? 'unexpected-error' : 'unexpected-error', `${what}: expected ${code ?? 'success'}, got ${got}: ${e.message}`);
        return undefined;
      }
      if (code !== null) fail('missing-error', `${what}: expected ${code}, got success`);
      return r;
    };
    const expectCodeAsync = async (code, what, p) => {
      try {
        await p;
      } catch (e) {
        const got = typedCode(e, isXq);
        if (got !== code) fail('unexpected-error', `${what}: expected ${code ?? 'success'}, got ${got}: ${e.message}`);
        return;
      }
      if (code !== null) fail('missing-error', `${what}: expected ${code}, got success`);
    };
    const data = (b, n, heads = H, scale = 1) => {
      const x = fill(heads * n * D, PALETTES[b.palette], b.seed);
      if (scale !== 1) for (let i = 0; i < x.length; i++) x[i] *= scale;
      if (b.poison !== null) x[b.seed % x.length] = POISON[b.poison][0];
      return x;
    };
    const maxAbs = (x) => x.reduce((m, v) => (v - v !== 0 ? NaN : Math.max(m, Math.abs(v))), 0);
    /** The error the input policy gives K/V `x` (null: accepted). */
    const kvError = (x) => {
      const m = maxAbs(x);
      if (m !== m) return 'E_NON_FINITE';
      if (cfg.quantized && m > FP16_MAX) return 'E_NON_FINITE';
      return null;
    };
    const tensorsHeld = () => tf.memory().numTensors;

    /** Compare everything observable with the model (dequantize within the quantization bound, seqLength). */
    const checkState = (where) => {
      if (disposed) return;
      for (let l = 0; l < LAYERS; l++) {
        if (cache.seqLength(l) !== model.tokens) fail('state-corruption', `${where}: layer ${l} holds ${cache.seqLength(l)} tokens, model ${model.tokens}`);
        if (model.tokens === 0) continue;
        const { keys, values } = cache.dequantize(l);
        const kk = keys.dataSync(), vv = values.dataSync();
        tf.dispose([keys, values]);
        const T = model.tokens;
        const K = model.k[l], V = model.v[l];
        // bound: the range of the element's group ≤ the range over its (head, channel) for keys, its (head, token) for values
        for (let h = 0; h < H; h++) {
          for (let c = 0; c < D; c++) {
            let mn = Infinity, mx = -Infinity;
            for (let t = 0; t < T; t++) { const x = K[(h * T + t) * D + c]; mn = Math.min(mn, x); mx = Math.max(mx, x); }
            for (let t = 0; t < T; t++) {
              const i = (h * T + t) * D + c, x = K[i], y = kk[i];
              const tol = cfg.quantized ? mx - mn + 2 ** -9 * Math.abs(x) + 2 ** -23 : 0;
              if (!Number.isFinite(y)) fail('non-finite', `${where}: dequantized key ${y} (layer ${l}, head ${h}, token ${t}, channel ${c})`);
              if (!(Math.abs(y - x) <= tol)) fail('state-corruption', `${where}: key (layer ${l}, head ${h}, token ${t}, channel ${c}) is ${y}, model ${x} (bound ${tol})`);
            }
          }
          for (let t = 0; t < T; t++) {
            let mn = Infinity, mx = -Infinity;
            for (let c = 0; c < D; c++) { const x = V[(h * T + t) * D + c]; mn = Math.min(mn, x); mx = Math.max(mx, x); }
            for (let c = 0; c < D; c++) {
              const i = (h * T + t) * D + c, x = V[i], y = vv[i];
              const tol = cfg.quantized ? mx - mn + 2 ** -9 * Math.abs(x) + 2 ** -23 : 0;
              if (!Number.isFinite(y)) fail('non-finite', `${where}: dequantized value ${y} (layer ${l}, head ${h}, token ${t})`);
              if (!(Math.abs(y - x) <= tol)) fail('state-corruption', `${where}: value (layer ${l}, head ${h}, token ${t}, channel ${c}) is ${y}, model ${x} (bound ${tol})`);
            }
          }
        }
      }
    };
    /** Append `n` tokens (head-major x) to the model's layer lists. */
    const modelAdd = (ks, vs, n) => {
      const T = model.tokens;
      for (let l = 0; l < LAYERS; l++) {
        const grow = (old, add) => {
          const out = new Float32Array(H * (T + n) * D);
          for (let h = 0; h < H; h++) {
            out.set(old.subarray(h * T * D, (h + 1) * T * D), h * (T + n) * D);
            out.set(add.subarray(h * n * D, (h + 1) * n * D), (h * (T + n) + T) * D);
          }
          return out;
        };
        model.k[l] = grow(model.k[l] ?? new Float32Array(0), ks);
        model.v[l] = grow(model.v[l] ?? new Float32Array(0), vs);
      }
      model.tokens += n;
      model.maxK = Math.max(model.maxK, maxAbs(ks));
      model.maxV = Math.max(model.maxV, maxAbs(vs));
    };
    const clearModel = () => (model = { tokens: 0, k: [], v: [], maxK: 0, maxV: 0 });
    /** The error a prefill/append of `n` tokens gets now (null: accepted). */
    const addError = (ks, vs, n) => {
      if (disposed) return 'E_STATE';
      if (maxTokens && model.tokens + n > maxTokens) return 'E_CAPACITY';
      return kvError(ks) ?? kvError(vs);
    };

    /** Every layer in order (layers advance together, as a model drives them); stops at the first error. */
    const eachLayer = (code, what, f) => {
      for (let l = 0; l < LAYERS; l++) {
        expectCode(code, `${what} (layer ${l})`, () => f(l));
        if (code !== null) return; // the first layer fails; nothing changed anywhere
      }
    };

    try {
      for (const [step, cmd] of commands.entries()) {
        const where = `step ${step} (${cmd.op})`;
        if (cmd.op === 'prefill' || cmd.op === 'append') {
          const n = cmd.op === 'prefill' ? cmd.n : 1;
          const ks = data(cmd.k, n), vs = data(cmd.v, n);
          const kt = tf.tensor3d(ks, [H, n, D]), vt = tf.tensor3d(vs, [H, n, D]);
          const code = addError(ks, vs, n);
          if (cmd.op === 'append' && cmd.async) {
            for (let l = 0; l < LAYERS; l++) {
              await expectCodeAsync(code, `${where} (layer ${l})`, cache.appendAsync(l, kt, vt));
              if (code !== null) break;
            }
          } else eachLayer(code, where, (l) => cache[cmd.op](l, kt, vt));
          if (code === null) modelAdd(ks, vs, n);
          tf.dispose([kt, vt]);
        } else if (cmd.op === 'attend') {
          const nq = Math.min(cmd.nq, Math.max(1, model.tokens));
          const qs = data(cmd.q, nq, QH, cmd.qScale);
          const qt = tf.tensor3d(qs, [QH, nq, D]);
          const mq = maxAbs(qs);
          let code = null;
          if (disposed || model.tokens === 0) code = 'E_STATE';
          else if (mq !== mq) code = 'E_NON_FINITE';
          else if (D * mq * model.maxK > ATTENTION_BOUND || model.maxV > ATTENTION_BOUND) code = 'E_NON_FINITE';
          for (let l = 0; l < LAYERS; l++) {
            // what attention sees: dequantize() before attend (attend ends with the flush)
            let kk, vv;
            if (code === null) {
              const { keys, values } = cache.dequantize(l);
              kk = keys.dataSync();
              vv = values.dataSync();
              tf.dispose([keys, values]);
            }
            const out = expectCode(code, `${where} (layer ${l})`, () => cache.attend(l, qt));
            if (code !== null) break;
            const o = out.dataSync();
            out.dispose();
            // consistency: float64 attention over dequantize(), with the error the arithmetic allows. dequantize()
            // rounds code·scale + zero in fp16 (the reference's recipe), the kernels compute q·scale·code + q·zero in
            // float32/64: they differ by rounding at the size of the terms |scale·code| + |zero|, not of the result
            // (fuzzing found groups where 3·333.25 − 1000 is −0.25 in one and 0 in the other). |zero| ≤ the largest
            // |input| of the group and |scale·code| ≤ |x̂| + |zero|, so each term is bounded by |x̂| + 2·(the
            // largest |input| of its channel (keys) / its row (values)).
            const T = model.tokens;
            const K = model.k[l], V = model.v[l];
            let vmax = 0;
            for (const x of vv) vmax = Math.max(vmax, Math.abs(x));
            let vterm = vmax;
            if (cfg.quantized) for (const x of V) vterm = Math.max(vterm, vmax + 2 * Math.abs(x));
            for (let h = 0; h < QH; h++) {
              const kv = Math.floor(h / rep);
              // largest |key input| per channel of this KV head
              const kin = new Float64Array(D);
              if (cfg.quantized) for (let t = 0; t < T; t++) for (let c = 0; c < D; c++) kin[c] = Math.max(kin[c], Math.abs(K[(kv * T + t) * D + c]));
              for (let i = 0; i < nq; i++) {
                const last = T - nq + i;
                const sc = new Float64Array(last + 1);
                let mx = -Infinity, dmax = 0;
                for (let t = 0; t <= last; t++) {
                  let a = 0, m = 0;
                  for (let c = 0; c < D; c++) {
                    const qc = qs[(h * nq + i) * D + c], x = kk[(kv * T + t) * D + c];
                    a += qc * x;
                    m += Math.abs(qc) * (Math.abs(x) + 2 * kin[c]);
                  }
                  sc[t] = a / Math.sqrt(D);
                  dmax = Math.max(dmax, m / Math.sqrt(D));
                  mx = Math.max(mx, sc[t]);
                }
                let sum = 0;
                for (let t = 0; t <= last; t++) { sc[t] = Math.exp(sc[t] - mx); sum += sc[t]; }
                const delta = (cfg.quantized ? 2 ** -9 : 2 ** -20) * dmax + 1e-6; // score error: stored rounding vs exact kernels
                const tol = vmax * Math.min(2, Math.expm1(2 * delta)) + vterm * (cfg.quantized ? 2 ** -9 : 2 ** -20) + 1e-5;
                for (let c = 0; c < D; c++) {
                  let ref = 0;
                  for (let t = 0; t <= last; t++) ref += (sc[t] / sum) * vv[(kv * T + t) * D + c];
                  const got = o[(h * nq + i) * D + c];
                  if (!Number.isFinite(got)) fail('non-finite', `${where}: attend output ${got} (layer ${l})`);
                  if (!(Math.abs(got - ref) <= tol)) fail('mismatch', `${where}: attend ${got} vs float64 over dequantize() ${ref} (layer ${l}, tol ${tol})`);
                }
              }
            }
          }
          qt.dispose();
        } else if (cmd.op === 'burst') {
          // un-awaited appendAsync on every layer, token after token, then something else before they settle
          const items = cmd.k.map((b) => {
            const x = data(b, 1);
            return { x, t: tf.tensor3d(x, [H, 1, D]) };
          });
          const pending = [];
          const launched = [];
          const startDisposed = disposed, startTokens = model.tokens;
          for (const it of items) {
            for (let l = 0; l < LAYERS; l++) {
              let p;
              try {
                p = cache.appendAsync(l, it.t, it.t);
              } catch (e) {
                fail('untyped-error', `appendAsync threw synchronously instead of rejecting: ${e.message}`);
              }
              pending.push(p.then(() => null, (e) => typedCode(e, isXq)));
            }
            launched.push(it);
          }
          let cancelled = false;
          if (cmd.then === 'reset') { expectCode(disposed ? 'E_STATE' : null, `${where} reset`, () => cache.reset()); cancelled = !disposed; }
          else if (cmd.then === 'dispose') { cache.dispose(); cancelled = true; }
          // queued: not rejected when called (disposed, or over capacity counting the tokens held then)
          const queued = !disposed && !(maxTokens && model.tokens + 1 > maxTokens);
          if (cmd.then === 'sync-append') {
            const want = disposed || queued ? 'E_STATE' : addError(items[0].x, items[0].x, 1);
            expectCode(want, `${where} sync append while pending`, () => cache.append(0, items[0].t, items[0].t));
            if (want === null) fail('state-corruption', 'model: a sync append cannot succeed here'); // capacity is full when nothing queued
          } else if (cmd.then === 'attend' && !disposed && queued) {
            const q = tf.tensor3d(fill(QH * D, [0.1, -0.2], 1), [QH, 1, D]);
            expectCode('E_STATE', `${where} attend while pending`, () => cache.attend(0, q));
            q.dispose();
          }
          const codes = await Promise.all(pending);
          // the model: every append lands in order unless cancelled; each is checked when it runs
          let i = 0;
          for (const it of launched) {
            // checked when called (state, capacity against the tokens held then), else when it runs (cancelled, data)
            const atCall = startDisposed ? 'E_STATE' : maxTokens && startTokens + 1 > maxTokens ? 'E_CAPACITY' : null;
            const want = atCall ?? (disposed || cancelled ? 'E_STATE' : addError(it.x, it.x, 1));
            for (let l = 0; l < LAYERS; l++, i++) {
              // after a failed layer-0 append, layer 1 still runs (it was queued): same data, same verdict
              const got = codes[i];
              if (got !== want) fail(got === null ? 'missing-error' : 'unexpected-error', `${where}: queued appendAsync (layer ${l}) gave ${got ?? 'success'}, model ${want ?? 'success'}`);
            }
            if (want === null) modelAdd(it.x, it.x, 1);
          }
          if (cmd.then === 'reset' && cancelled) clearModel();
          if (cmd.then === 'dispose') disposed = true;
          tf.dispose(items.map((it) => it.t));
        } else if (cmd.op === 'reset') {
          expectCode(disposed ? 'E_STATE' : null, where, () => cache.reset());
          if (!disposed) clearModel();
        } else if (cmd.op === 'dispose') {
          cache.dispose();
          disposed = true;
        }
        // the only tensors alive: the full cache's K/V chunks (one per K and V per layer below 1024 tokens)
        const held = !disposed && !cfg.quantized && model.tokens > 0 ? 2 * LAYERS * Math.ceil(model.tokens / 1024) : 0;
        if (tensorsHeld() !== base + held) fail('leak', `${where}: ${tensorsHeld() - base} tensors alive, expected ${held}`);
        checkState(where);
      }
    } finally {
      cache.dispose();
    }
    if (tf.memory().numTensors !== base) throw new FuzzFailure('leak', `${cfg.id}: ${tf.memory().numTensors - base} tensors left after dispose`);
  }

  const input = fc.record({
    config: fc.nat(CONFIGS.length - 1),
    kvHeads: fc.constantFrom(1, 2),
    rep: fc.constantFrom(1, 2),
    maxTokens: fc.option(fc.integer({ min: 1, max: 80 }), { freq: 3 }),
    commands: fc.array(command, { minLength: 1, maxLength: 12 }),
  });
  return [{ name: 'cache-state-machine', arbitrary: input, check: run, stats }];
}
