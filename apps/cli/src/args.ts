import { readFileSync } from 'node:fs';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { XqError, XqFormatError } from '@xquant/quant';

/** Parsed options of a sub-command; each command narrows `values` to its own option types. */
interface CommandArgs {
  values: Record<string, string | boolean | string[] | number | number[] | undefined>;
  positionals: string[];
}

type Options = NonNullable<ParseArgsConfig['options']>;

/** The flags several commands share, spelled the same everywhere (each command picks the ones it takes). */
const SHARED_OPTIONS = {
  model: { type: 'string' },
  backend: { type: 'string' },
  caches: { type: 'string' },
  'residual-length': { type: 'string' },
  'group-size': { type: 'string' },
  'value-group-size': { type: 'string' },
  out: { type: 'string' },
  json: { type: 'boolean' },
  plugin: { type: 'string', multiple: true },
} as const satisfies Options;

/** Old spellings, still accepted with a warning: deprecated alias → flag. */
const DEPRECATED: Readonly<Record<string, string>> = { residual: 'residual-length', 'group-sizes': 'group-size', 'value-group-sizes': 'value-group-size' };

/** The shared flags named in `names`. */
export function sharedOptions(...names: (keyof typeof SHARED_OPTIONS)[]): Options {
  return Object.fromEntries(names.map((n) => [n, SHARED_OPTIONS[n]]));
}

/** Options of {@link parseCommandArgs}. */
interface ParseOptions {
  /** Accept positional arguments. */
  positionals?: boolean;
  /** Flags holding one positive integer (`'one'`) or a comma-separated list of them (`'list'`), parsed to numbers. */
  ints?: Record<string, 'one' | 'list'>;
}

/**
 * Parse a sub-command's arguments (`--help`/`-h` is added, and the deprecated spelling of each flag it takes, which
 * warns on stderr; `ints` flags become numbers). Returns the parsed arguments, or the exit code to return: 0 after
 * printing the usage for `--help`, 2 after printing the error and usage for bad arguments.
 */
export function parseCommandArgs(command: string, usage: string, argv: string[], options: Options, parse: ParseOptions = {}): CommandArgs | number {
  const aliases = Object.entries(DEPRECATED).filter(([, flag]) => flag in options);
  let parsed: CommandArgs;
  try {
    const all = { ...options, ...Object.fromEntries(aliases.map(([old, flag]) => [old, options[flag]!])), help: { type: 'boolean', short: 'h' } } as Options;
    parsed = parseArgs({ args: argv, options: all, allowPositionals: parse.positionals ?? false }) as CommandArgs;
    for (const [old, flag] of aliases) {
      if (parsed.values[old] === undefined) continue;
      console.error(`xquant ${command}: --${old} is deprecated; use --${flag}`);
      parsed.values[flag] ??= parsed.values[old];
      delete parsed.values[old];
    }
    for (const [flag, kind] of Object.entries(parse.ints ?? {})) {
      const list = positiveInts(parsed.values[flag], flag);
      if (list && kind === 'one' && list.length !== 1) throw new Error(`--${flag} takes one value; got '${String(parsed.values[flag])}'`);
      parsed.values[flag] = kind === 'one' ? list?.[0] : list;
    }
  } catch (e) {
    return usageError(command, (e as Error).message, usage);
  }
  if (parsed.values.help) {
    console.log(usage);
    return 0;
  }
  return parsed;
}

/** Read and parse a JSON file: `E_IO` when it cannot be read, `E_FORMAT` when it is not JSON. */
export function readJsonFile(path: string, what = 'JSON file'): unknown {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new XqError('E_IO', `${path}: cannot read ${what} (${(e as Error).message})`, { cause: e });
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new XqFormatError(`${path}: not a JSON ${what} (${(e as Error).message})`, { cause: e });
  }
}

/** Print `xquant <command>: <message>` and the usage to stderr; returns the usage-error exit code 2. */
function usageError(command: string, message: string, usage: string): number {
  console.error(`xquant ${command}: ${message}\n\n${usage}`);
  return 2;
}

/** The comma-separated positive integers of `--flag` (undefined when absent). */
function positiveInts(value: unknown, flag: string): number[] | undefined {
  if (value === undefined) return undefined;
  return String(value)
    .split(',')
    .map((s) => {
      const n = Number(s.trim());
      if (s.trim() === '' || !Number.isInteger(n) || n <= 0) throw new Error(`--${flag} must be a positive integer (or a comma-separated list where it takes several); got '${String(value)}'`);
      return n;
    });
}
