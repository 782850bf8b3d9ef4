import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import * as tfjs from '@xquant/tfjs';
import { XqConfigError, XqError } from '@xquant/quant';

/**
 * What a plugin's default export (or a named `register` export) is called with: the `@xquant/tfjs` module this CLI
 * runs, so a plugin needs no dependency of its own to register strategies and kernels.
 */
export type PluginApi = typeof tfjs;

/** One loaded plugin: its path and the strategy ids it registered. */
export interface LoadedPlugin {
  path: string;
  strategies: string[];
}

/**
 * Load `--plugin` modules in order. Each module is imported (it may register strategies itself, through its own
 * `@xquant/tfjs` import: the registries are shared process-wide); then its default export, or else its `register`
 * export, when it is a function, is called with {@link PluginApi} and awaited. A module that cannot be imported is an
 * `E_IO` error; one whose registration throws, an `E_CONFIG` error naming the plugin.
 */
export async function loadPlugins(paths: readonly string[], log: (line: string) => void): Promise<LoadedPlugin[]> {
  const loaded: LoadedPlugin[] = [];
  for (const path of paths) {
    const before = new Set(tfjs.strategyIds());
    let mod: { default?: unknown; register?: unknown };
    try {
      mod = (await import(pathToFileURL(resolve(path)).href)) as typeof mod;
    } catch (e) {
      throw new XqError('E_IO', `${path}: cannot load plugin (${(e as Error).message.split('\n')[0]})`, { cause: e });
    }
    const register = typeof mod.default === 'function' ? mod.default : typeof mod.register === 'function' ? mod.register : undefined;
    try {
      await (register as ((api: PluginApi) => unknown) | undefined)?.(tfjs);
    } catch (e) {
      throw new XqConfigError('E_CONFIG', `${path}: plugin registration failed (${(e as Error).message})`, { cause: e });
    }
    const strategies = tfjs.strategyIds().filter((id) => !before.has(id));
    log(`plugin ${path}: ${strategies.length ? `registered ${strategies.join(', ')}` : 'registered no strategy'}`);
    loaded.push({ path, strategies });
  }
  return loaded;
}
