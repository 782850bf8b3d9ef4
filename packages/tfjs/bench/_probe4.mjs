import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { chunkedAttention as oldA } from './_old-attention.mjs';
const { chunkedAttention: newA } = await import('@xquant/tfjs');
await tf.setBackend('cpu'); tf.enableProdMode();
const KVH = 2, QH = 8, D = 64, C = 1024;
for (const T of [1024, 2048, 4096, 8192]) {
  const ks = [], vs = [];
  for (let o = 0; o < T; o += C) { ks.push(tf.randomNormal([KVH, Math.min(C, T - o), D])); vs.push(tf.randomNormal([KVH, Math.min(C, T - o), D])); }
  const q = tf.randomNormal([QH, 1, D]);
  const r = { old: [], new: [] };
  for (let i = 0; i < 12; i++) for (const [name, f] of [['old', oldA], ['new', newA]]) {
    const t0 = performance.now(); const o = f(q, ks, vs); o.dataSync(); o.dispose(); r[name].push(performance.now() - t0);
  }
  const med = (a) => a.sort((x, y) => x - y)[a.length >> 1];
  console.log(T, 'old', med(r.old).toFixed(2), 'new', med(r.new).toFixed(2), 'ratio', (med(r.old) / med(r.new)).toFixed(1));
  tf.dispose([...ks, ...vs, q]);
}
