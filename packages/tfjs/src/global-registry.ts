/**
 * A map kept on `globalThis` under `Symbol.for('@xquant/tfjs/<name>')`: one per process, so the ESM and the CJS build
 * of this package (a dual install) share their registries instead of splitting them.
 * @internal
 */
export function globalRegistry<V>(name: string): Map<string, V> {
  const g = globalThis as { [key: symbol]: Map<string, V> | undefined };
  const key = Symbol.for(`@xquant/tfjs/${name}`);
  return (g[key] ??= new Map<string, V>());
}
