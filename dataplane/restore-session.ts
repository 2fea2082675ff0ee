// A long-running `iptables-restore --noflush --verbose` (or ip6tables-restore) that takes one
// batch after another on its stdin, so a policy change costs no process start.
//
// Why: under nf_tables, starting the tool for a handful of rules costs 10-20 ms on the project's
// 2-core VM (exec, loading the extensions, fetching the table), and every container start or stop
// writes both families. Fed to a tool that is already running, the same batch takes 1.5-3 ms
// (both measured from a shell in the policy benchmark's namespace).
//
// How completion is seen: the tool echoes a comment line to stdout when it reaches it in verbose
// mode, and it reads its input strictly in order, committing each table at its COMMIT line. So a
// batch followed by `# <marker>` is in the kernel once the marker comes back. On a failed line the
// tool prints `line N failed` (N counted from its first input) and exits, having committed none of
// the table it was in: the batch fails as a fresh tool's would, and the next batch starts a new
// tool. Between batches the tool's cache may be stale, but nf_tables makes a commit from a stale
// cache fail with ERESTART and the tool refreshes and retries (tested: rules added, inserted at a
// position and deleted by spec after another process changed the same chains).
//
// Only for the nf_tables backend: the legacy tool takes the xtables lock, which a tool that lives
// on could hold against Docker's own iptables calls (not tried on a legacy host).
// The child is started with Node's spawn once per session (not per batch), so the fork cost the
// exec helper avoids is paid once. Its pipes do not keep this process alive while it is idle; if
// this process dies, the tool reads end-of-file and exits (an unfinished table is not committed).

import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import type { Socket } from 'node:net';
import { inNetns, toCommandError } from './exec.js';
import { assertNetnsPath } from './names.js';

/** Kept of the tool's stderr for the error message. */
const STDERR_KEEP = 16 * 1024;
/** How long close() waits for the tool to exit after its stdin is closed. */
const CLOSE_WAIT_MS = 5_000;

export type RestoreTool = 'iptables-restore' | 'ip6tables-restore';

interface Pending {
  readonly marker: string;
  readonly op: string;
  /** Lines the tool had read before this batch: its line numbers are counted from its start. */
  readonly lineOffset: number;
  readonly resolve: () => void;
  readonly reject: (err: Error) => void;
  readonly timer: NodeJS.Timeout;
}

interface Running {
  readonly child: ChildProcessWithoutNullStreams;
  /** Lines written to the tool so far. */
  lines: number;
  stdout: string;
  stderr: string;
  pending: Pending | undefined;
  /** Resolves once the process has exited. */
  readonly exit: Promise<void>;
}

export class RestoreSession {
  /** The tool while it runs; cleared as soon as it failed, exited or was closed. */
  private running: Running | undefined;
  private seq = 0;
  private readonly args: readonly string[];

  constructor(
    readonly tool: RestoreTool,
    /** Run in the network namespace of this file (through nsenter): tests and the benchmark. */
    private readonly netnsPath?: string,
  ) {
    if (netnsPath !== undefined) assertNetnsPath(netnsPath);
    this.args = ['-w', '--noflush', '--verbose'];
  }

  /** The tool's process id while one is running (tests). */
  get pid(): number | undefined {
    return this.running?.child.pid;
  }

  /**
   * Feed `input` (whole tables, each ending in COMMIT) and resolve once the tool has committed it.
   * Rejects with a CommandError as `runWithInput` would, its "line N" counted within `input`. One
   * batch at a time: the caller serializes.
   */
  apply(input: string, op: string, timeoutMs: number): Promise<void> {
    if (this.running?.pending !== undefined) return Promise.reject(new Error(`${op}: a batch is already in progress`));
    if (!input.endsWith('\n')) input += '\n';
    const r = this.running ?? this.start();
    const marker = `# calico-libnetwork batch ${++this.seq}`;
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        r.child.kill('SIGKILL');
        this.fail(r, { killed: true, signal: 'SIGKILL' }, timeoutMs);
      }, timeoutMs);
      r.pending = { marker, op, lineOffset: r.lines, resolve, reject, timer };
      // Kept alive while a batch is in flight only.
      pipe(r.child.stdout).ref();
      r.stderr = '';
      r.lines += countLines(input) + 1;
      // One write: every write to the pipe wakes the tool.
      r.child.stdin.write(`${input}${marker}\n`);
    });
  }

  /** End the tool (stdin closed: it exits after what it has read) and wait for it. */
  async close(): Promise<void> {
    const r = this.running;
    this.running = undefined;
    if (r === undefined) return;
    r.child.stdin.end();
    const timer = setTimeout(() => r.child.kill('SIGKILL'), CLOSE_WAIT_MS);
    await r.exit;
    clearTimeout(timer);
  }

  private start(): Running {
    const [file, args] = this.netnsPath === undefined ? [this.tool, this.args] : inNetns(this.netnsPath, this.tool, this.args);
    const child = spawn(file, args, { stdio: ['pipe', 'pipe', 'pipe'], windowsHide: true });
    let exited: () => void = () => undefined;
    const r: Running = { child, lines: 0, stdout: '', stderr: '', pending: undefined, exit: new Promise((res) => (exited = res)) };
    this.running = r;
    child.stdout.setEncoding('utf8');
    child.stderr.setEncoding('utf8');
    child.stdout.on('data', (chunk: string) => this.onStdout(r, chunk));
    child.stderr.on('data', (chunk: string) => {
      r.stderr = (r.stderr + chunk).slice(-STDERR_KEEP);
    });
    // EPIPE (the tool exited mid-batch) surfaces through the exit status instead.
    child.stdin.on('error', () => undefined);
    child.on('error', (err: NodeJS.ErrnoException) => {
      // Not started (ENOENT, EACCES): 'exit' does not follow.
      exited();
      this.fail(r, { code: err.code ?? null, message: err.message }, 0);
    });
    // 'close', not 'exit': by then the tool's last words on stderr have been read.
    child.on('close', (code: number | null, signal: NodeJS.Signals | null) => {
      exited();
      this.fail(r, code === 0 ? { code: 'EOF' } : { code, signal }, 0);
    });
    child.unref();
    for (const stream of [child.stdout, child.stderr, child.stdin]) pipe(stream).unref();
    return r;
  }

  private onStdout(r: Running, chunk: string): void {
    r.stdout += chunk;
    let nl: number;
    while ((nl = r.stdout.indexOf('\n')) >= 0) {
      const line = r.stdout.slice(0, nl);
      r.stdout = r.stdout.slice(nl + 1);
      const p = r.pending;
      if (p !== undefined && line === p.marker) {
        r.pending = undefined;
        clearTimeout(p.timer);
        pipe(r.child.stdout).unref();
        p.resolve();
      }
    }
  }

  /** The running batch (if any) fails with what the tool said; the session is done. */
  private fail(r: Running, outcome: { code?: number | string | null; signal?: NodeJS.Signals | null; killed?: boolean; message?: string }, timeoutMs: number): void {
    if (this.running === r) this.running = undefined;
    const p = r.pending;
    if (p === undefined) return;
    r.pending = undefined;
    clearTimeout(p.timer);
    // Line numbers as a fresh tool fed only this batch would print them.
    const stderr = r.stderr.replace(/line:? (\d+)/gi, (m, n: string) => m.replace(n, String(Math.max(1, Number(n) - p.lineOffset))));
    const err =
      outcome.code === 'EOF'
        ? Object.assign(new Error(`${this.tool} exited before finishing the batch`), { code: null })
        : Object.assign(new Error(outcome.message ?? `${this.tool} failed`), outcome);
    p.reject(toCommandError(err, this.tool, this.args, p.op, stderr, timeoutMs));
  }
}

/** A child's stdio pipe is a net.Socket, which can stop holding the event loop open. */
function pipe(stream: NodeJS.ReadableStream | NodeJS.WritableStream): Socket {
  return stream as Socket;
}

function countLines(text: string): number {
  let n = 0;
  for (let i = text.indexOf('\n'); i >= 0; i = text.indexOf('\n', i + 1)) n++;
  return n;
}
