// Promise wrapper over execFile for kernel tools (ip, sysctl, iptables-restore). Argument arrays
// only: no shell ever sees a name or an address. Failures become CommandError (a DataplaneError)
// whose message names the operation and carries the tool's stderr, so callers can add the object
// ("add route 10.0.0.5/32 dev cali1234: ...") and the error funnel can log it once.

import { execFile } from 'node:child_process';
import { constants as osConstants } from 'node:os';
import { getSystemErrorName } from 'node:util';
import { DataplaneError } from '../lib/errors.js';
import type { ExecHelper } from './exec-helper.js';
import { assertNetnsPath } from './names.js';
import { nativeAddon, type NativeAddon, type NativeSpawnResult } from './native-addon.js';

export const DEFAULT_EXEC_TIMEOUT_MS = 10_000;
export const DEFAULT_EXEC_MAX_BUFFER_BYTES = 16 * 1024 * 1024;

export interface ExecOptions {
  /** Kill the process (SIGKILL) after this long. */
  timeoutMs?: number;
  maxBufferBytes?: number;
  /** Written to the process's stdin, which is then closed. Without it stdin is closed at once. */
  input?: string;
  /** Run the tool in the network namespace of this file (/run/netns/<name>, a container's
   * sandbox): entered by the native starter itself, else through `nsenter --net=<path> --`. */
  netnsPath?: string;
}

export interface ExecResult {
  stdout: string;
  stderr: string;
}

/** A command that failed to start, timed out, or exited non-zero. */
export class CommandError extends DataplaneError {
  constructor(
    message: string,
    readonly file: string,
    readonly args: readonly string[],
    /** The tool's stderr (trimmed); empty if it never ran. */
    readonly stderr: string,
    /** Exit code; null when killed by a signal or never started. */
    readonly exitCode: number | null,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

let spawned = 0;
let helper: ExecHelper | undefined;
let native: NativeAddon | undefined;

/** Starts commands through `h` from now on (the daemon without the native addon; see
 * exec-helper.ts for why), or directly again with undefined. While `h` is not running, commands
 * start directly. */
export function startCommandsThrough(h: ExecHelper | undefined): void {
  helper = h;
}

/** Starts commands with the native addon's posix_spawn from now on (no fork of this process: the
 * daemon's way when the addon is built), or as before with false. Answers whether the addon is
 * there. */
export function startCommandsNatively(on: boolean): boolean {
  native = on ? nativeAddon() : undefined;
  return native !== undefined;
}

/** Number of processes this module has spawned since start: lets tests and benchmarks check that
 * the Join hot path stays cheap without asserting on time. */
export function spawnCount(): number {
  return spawned;
}

/**
 * Run `file args...` and resolve with its output. `op` describes the operation for error messages
 * ("create veth cali1234"). Rejects with CommandError.
 */
export function run(
  file: string,
  args: readonly string[],
  op: string,
  options: ExecOptions = {},
): Promise<ExecResult> {
  const timeout = options.timeoutMs ?? DEFAULT_EXEC_TIMEOUT_MS;
  const maxBufferBytes = options.maxBufferBytes ?? DEFAULT_EXEC_MAX_BUFFER_BYTES;
  let netnsPath: string | undefined;
  try {
    netnsPath = options.netnsPath === undefined ? undefined : assertNetnsPath(options.netnsPath);
  } catch (err) {
    return Promise.reject(err instanceof Error ? err : new Error(String(err)));
  }
  if (native !== undefined) {
    spawned++;
    const lib = native;
    return new Promise((resolve, reject) => {
      lib.spawn(file, [...args], Buffer.from(options.input ?? '', 'utf8'), timeout, maxBufferBytes, (r) => {
        const stdout = r.stdout.toString('utf8');
        const stderr = r.stderr.toString('utf8');
        const err = spawnError(r, file, args, netnsPath, lib);
        if (err === undefined) resolve({ stdout, stderr });
        else reject(toCommandError(err, file, args, op, stderr, timeout));
      }, netnsPath ?? null);
    });
  }
  if (netnsPath !== undefined) {
    const [nsenter, nsArgs] = inNetns(netnsPath, file, args);
    return run(nsenter, nsArgs, op, { ...options, netnsPath: undefined });
  }
  if (helper?.running === true) {
    spawned++;
    const input = options.input ?? '';
    return helper.run({ file, args: [...args], input, timeoutMs: timeout, maxBufferBytes }).then(({ stdout, stderr, error }) => {
      if (error === undefined) return { stdout, stderr };
      throw toCommandError(Object.assign(new Error(error.message), error), file, args, op, stderr, timeout);
    });
  }
  return new Promise((resolve, reject) => {
    spawned++;
    const child = execFile(
      file,
      [...args],
      {
        timeout,
        killSignal: 'SIGKILL',
        maxBuffer: maxBufferBytes,
        encoding: 'utf8',
        windowsHide: true,
      },
      (err, stdout, stderr) => {
        if (!err) {
          resolve({ stdout, stderr });
          return;
        }
        reject(toCommandError(err, file, args, op, String(stderr ?? ''), timeout));
      },
    );
    // stdin: feed the batch if any, and always close it so a tool waiting on input cannot hang.
    // EPIPE (the tool exited before reading everything) surfaces through the exit status instead.
    child.stdin?.on('error', () => undefined);
    child.stdin?.end(options.input ?? '');
  });
}

/** The command line that runs `file args...` in the network namespace of `netnsPath` without the
 * native starter. nsenter joins only the network namespace (`ip netns exec` also makes a mount
 * namespace and remounts /sys, which costs a few milliseconds and none of our tools need). */
export function inNetns(netnsPath: string, file: string, args: readonly string[]): [string, string[]] {
  return ['nsenter', [`--net=${assertNetnsPath(netnsPath)}`, '--', file, ...args]];
}

/** Run with `input` fed on stdin (`ip -batch -`, `iptables-restore`). */
export function runWithInput(
  file: string,
  args: readonly string[],
  input: string,
  op: string,
  options: Omit<ExecOptions, 'input'> = {},
): Promise<ExecResult> {
  return run(file, args, op, { ...options, input });
}

const SIGNAL_NAMES = new Map<number, NodeJS.Signals>(Object.entries(osConstants.signals).map(([name, n]) => [n, name as NodeJS.Signals]));

/** The error execFile would have reported for the same outcome, or undefined for success. */
function spawnError(r: NativeSpawnResult, file: string, args: readonly string[], netnsPath: string | undefined, lib: NativeAddon): ExecFileError | undefined {
  const cmd = [file, ...args].join(' ');
  if (r.netnsErrno !== undefined) {
    return Object.assign(new Error(`cannot enter network namespace ${netnsPath ?? '?'}: ${lib.strerror(r.netnsErrno)}`), { code: 'ENETNS' });
  }
  if (r.spawnErrno !== undefined) {
    const name = getSystemErrorName(-r.spawnErrno);
    return Object.assign(new Error(`spawn ${file} ${name}`), { code: name });
  }
  if (r.overLimit === true) {
    return Object.assign(new Error('stdout maxBuffer length exceeded'), { code: 'ERR_CHILD_PROCESS_STDIO_MAXBUFFER' });
  }
  if (r.exitCode === 0 && r.killed !== true) return undefined;
  const signal = r.signal === undefined ? null : SIGNAL_NAMES.get(r.signal) ?? null;
  return Object.assign(new Error(`Command failed: ${cmd}\n${r.stderr.toString('utf8')}`), {
    code: r.exitCode ?? null,
    killed: r.killed === true,
    signal,
  });
}

/** What execFile's callback reports (and the other starters mimic). */
export interface ExecFileError extends Error {
  code?: number | string | null;
  killed?: boolean;
  signal?: NodeJS.Signals | null;
}

/** The CommandError for a tool's outcome, worded the same whichever way the tool was started. */
export function toCommandError(
  err: ExecFileError,
  file: string,
  args: readonly string[],
  op: string,
  stderr: string,
  timeoutMs: number,
): CommandError {
  const trimmed = stderr.trim();
  let detail: string;
  let exitCode: number | null = null;
  if (typeof err.code === 'number') {
    exitCode = err.code;
    detail = trimmed || `${file} exited with status ${err.code}`;
  } else if (err.code === 'ENOENT') {
    detail = `${file} not found (is it installed and on PATH?)`;
  } else if (err.code === 'ERR_CHILD_PROCESS_STDIO_MAXBUFFER') {
    detail = `${file} produced more output than allowed`;
  } else if (err.killed || err.signal) {
    detail = err.killed && err.signal === 'SIGKILL'
      ? `${file} did not finish within ${timeoutMs} ms`
      : `${file} was killed by ${err.signal ?? 'a signal'}`;
    if (trimmed) detail += `: ${trimmed}`;
  } else {
    detail = trimmed || err.message;
  }
  return new CommandError(`${op}: ${detail}`, file, args, trimmed, exitCode, { cause: err });
}
