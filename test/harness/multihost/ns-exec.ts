// Running commands inside a simulated host (or the router): `nsenter` with the namespaces to join,
// then the command, as an argument array (execFile/spawn, never a shell). nsenter execs the
// command in its own process (no fork: no PID namespace is entered), so the child's pid, exit
// status and signals are the command's own.
import { execFile, spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';

export const DEFAULT_TIMEOUT_MS = 15_000;
const MAX_BUFFER_BYTES = 16 * 1024 * 1024;
/** What a login shell on these hosts would have. */
export const HOST_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

export interface NsExecOptions {
  /** SIGKILL after this long (default 15 s). */
  readonly timeoutMs?: number;
  /** Written to stdin, which is then closed (closed at once without it). */
  readonly input?: string;
  /** Added to the host's default environment. */
  readonly env?: Readonly<Record<string, string>>;
}

export interface NsExecResult {
  /** Exit status; null when killed by a signal. */
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
  readonly timedOut: boolean;
}

export class NsExecError extends Error {
  constructor(message: string, readonly result: NsExecResult) {
    super(message);
  }
}

interface ExecFileFailure extends Error {
  code?: number | string | null;
  killed?: boolean;
  signal?: NodeJS.Signals | null;
}

/** Runs `nsenter <nsenterArgs> -- argv...`; resolves with the outcome whatever the exit status;
 * rejects only when nsenter cannot be started. */
export function nsExec(
  nsenterArgs: readonly string[],
  argv: readonly string[],
  baseEnv: Readonly<Record<string, string>>,
  opts: NsExecOptions = {},
): Promise<NsExecResult> {
  if (argv.length === 0) return Promise.reject(new Error('nsExec: empty argv'));
  const timeout = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  return new Promise((resolve, reject) => {
    const child = execFile(
      'nsenter',
      [...nsenterArgs, '--', ...argv],
      { timeout, killSignal: 'SIGKILL', maxBuffer: MAX_BUFFER_BYTES, encoding: 'utf8', env: { ...baseEnv, ...opts.env } },
      (err: ExecFileFailure | null, stdout, stderr) => {
        if (err === null) {
          resolve({ code: 0, signal: null, stdout, stderr, timedOut: false });
          return;
        }
        if (typeof err.code === 'string' && err.code !== 'ERR_CHILD_PROCESS_STDIO_MAXBUFFER') {
          reject(new Error(`cannot run nsenter for ${argv.join(' ')}: ${err.message}`, { cause: err }));
          return;
        }
        resolve({
          code: typeof err.code === 'number' ? err.code : null,
          signal: err.signal ?? null,
          stdout: String(stdout),
          stderr: String(stderr),
          timedOut: err.killed === true && err.signal === 'SIGKILL',
        });
      },
    );
    child.stdin?.on('error', () => undefined);
    child.stdin?.end(opts.input ?? '');
  });
}

/** Like nsExec, but a non-zero exit, a signal or a timeout rejects with NsExecError naming the
 * command and carrying its stderr. */
export async function nsRun(
  where: string,
  nsenterArgs: readonly string[],
  argv: readonly string[],
  baseEnv: Readonly<Record<string, string>>,
  opts: NsExecOptions = {},
): Promise<NsExecResult> {
  const r = await nsExec(nsenterArgs, argv, baseEnv, opts);
  if (r.code === 0) return r;
  const how = r.timedOut
    ? `did not finish within ${opts.timeoutMs ?? DEFAULT_TIMEOUT_MS} ms`
    : r.code === null ? `was killed by ${r.signal ?? 'a signal'}` : `exited with status ${r.code}`;
  throw new NsExecError(`${argv.join(' ')} on ${where} ${how}${r.stderr.trim() === '' ? '' : `: ${r.stderr.trim()}`}`, r);
}

/** A long-running process inside the namespaces (`nsenter ... -- argv`): the caller owns it. */
export function nsSpawn(
  nsenterArgs: readonly string[],
  argv: readonly string[],
  baseEnv: Readonly<Record<string, string>>,
  opts: Omit<SpawnOptions, 'env'> & { env?: Readonly<Record<string, string>> } = {},
): ChildProcess {
  if (argv.length === 0) throw new Error('nsSpawn: empty argv');
  const { env, ...rest } = opts;
  return spawn('nsenter', [...nsenterArgs, '--', ...argv], { stdio: 'ignore', ...rest, env: { ...baseEnv, ...env } });
}
