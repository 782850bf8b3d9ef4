import { parseArgs, type ParseArgsConfig } from 'node:util';

/** Parsed options of a sub-command; each command narrows `values` to its own option types. */
export interface CommandArgs {
  values: Record<string, string | boolean | string[] | undefined>;
  positionals: string[];
}

/**
 * Parse a sub-command's arguments (`--help`/`-h` is added). Returns the parsed arguments, or the exit code to
 * return: 0 after printing the usage for `--help`, 2 after printing the error and usage for bad arguments.
 */
export function parseCommandArgs(
  command: string,
  usage: string,
  argv: string[],
  options: NonNullable<ParseArgsConfig['options']>,
  allowPositionals = false,
): CommandArgs | number {
  let parsed: CommandArgs;
  try {
    parsed = parseArgs({ args: argv, options: { ...options, help: { type: 'boolean', short: 'h' } }, allowPositionals }) as CommandArgs;
  } catch (e) {
    return usageError(command, (e as Error).message, usage);
  }
  if (parsed.values.help) {
    console.log(usage);
    return 0;
  }
  return parsed;
}

/** Print `xquant <command>: <message>` and the usage to stderr; returns the usage-error exit code 2. */
export function usageError(command: string, message: string, usage: string): number {
  console.error(`xquant ${command}: ${message}\n\n${usage}`);
  return 2;
}
