// Starts the daemon's commands (ip, iptables-restore, ipset, ...) from a small helper process
// (exec-helper-main.ts) instead of from the daemon itself.
//
// Why: Node starts every child with fork() on Linux, which copies the caller's page tables and
// blocks its event loop while it does. On the project's 2-core VM that took 5.9 ms for a `node`
// holding 50 MB, 11 ms at 155 MB and 21 ms at 366 MB (spawn of `/bin/true`, median of 40), so the
// daemon (about 90 MB) lost 10-16 ms of its only thread per command, and a container's start and
// stop runs eight of them (veth, policy rules and sets, removal). In a CPU profile of the daemon
// under `npm run bench`, ChildProcess.spawn was 37 % of all its CPU time. The helper holds almost
// nothing, so each fork costs it the minimum, on the other core, and the daemon only sends a
// message. Requests carry exactly what execFile takes (argument arrays: no shell) and replies
// carry what execFile reported, so callers see the same results and errors either way.
import { fork, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';

export interface HelperRequest {
  readonly id: number;
  readonly file: string;
  readonly args: readonly string[];
  /** Written to the command's stdin, which is then closed. */
  readonly input: string;
  readonly timeoutMs: number;
  readonly maxBufferBytes: number;
}

/** What execFile's callback got, as plain data. */
export interface HelperReply {
  readonly id: number;
  readonly stdout: string;
  readonly stderr: string;
  readonly error?: {
    readonly message: string;
    /** The exit status, or a system error code (ENOENT, ERR_CHILD_PROCESS_STDIO_MAXBUFFER). */
    readonly code: number | string | null;
    readonly killed: boolean;
    readonly signal: NodeJS.Signals | null;
  };
}

const MAIN = join(__dirname, 'exec-helper-main.js');

export class ExecHelper {
  private readonly pending = new Map<number, (reply: HelperReply) => void>();
  private nextId = 1;
  private exited = false;
  private closing = false;

  private constructor(
    private readonly child: ChildProcess,
    onExit: (why: string) => void,
  ) {
    child.on('message', (reply: HelperReply) => {
      const done = this.pending.get(reply.id);
      if (done === undefined) return;
      this.pending.delete(reply.id);
      this.refWhileBusy();
      done(reply);
    });
    child.once('exit', (code, signal) => {
      this.exited = true;
      const why = `exec helper ${child.pid ?? '?'} exited (${signal ?? `status ${code ?? '?'}`})`;
      // Whether these commands ran is unknown: their callers get an error and recover as from any
      // failed command (the policy dataplane resyncs, the reconciler removes what is left).
      for (const [id, done] of this.pending) done({ id, stdout: '', stderr: '', error: { message: `${why} before the command's outcome was known`, code: null, killed: false, signal: null } });
      this.pending.clear();
      if (!this.closing) onExit(why);
    });
    // The daemon may exit whenever it likes: an idle helper holds nothing open.
    this.refWhileBusy();
  }

  /** Forks the helper; resolves once it runs. `onExit` is told if it ever stops (the caller then
   * starts commands itself). */
  static start(onExit: (why: string) => void = () => undefined): Promise<ExecHelper> {
    return new Promise((resolve, reject) => {
      const child = fork(MAIN, [], { execArgv: [], stdio: ['ignore', 'inherit', 'inherit', 'ipc'], serialization: 'json' });
      child.once('error', reject);
      child.once('spawn', () => {
        child.removeListener('error', reject);
        // After start, a failed send shows up as the exit handled above.
        child.on('error', () => undefined);
        resolve(new ExecHelper(child, onExit));
      });
    });
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  /** Whether commands can go through it. */
  get running(): boolean {
    return !this.exited && this.child.connected;
  }

  run(req: Omit<HelperRequest, 'id'>): Promise<HelperReply> {
    const id = this.nextId++;
    return new Promise((resolve) => {
      this.pending.set(id, resolve);
      this.refWhileBusy();
      const message: HelperRequest = { id, ...req };
      this.child.send(message, undefined, undefined, (err) => {
        if (err === null || !this.pending.has(id)) return;
        this.pending.delete(id);
        this.refWhileBusy();
        resolve({ id, stdout: '', stderr: '', error: { message: `exec helper unreachable: ${err.message}`, code: null, killed: false, signal: null } });
      });
    });
  }

  /** Stops the helper once it has answered what it was sent. */
  async close(): Promise<void> {
    if (this.exited) return;
    this.closing = true;
    const gone = new Promise<void>((resolve) => this.child.once('exit', () => resolve()));
    while (this.pending.size > 0 && !this.exited) await new Promise((resolve) => setTimeout(resolve, 10));
    // Held until it has exited: the caller waits for that.
    this.child.ref();
    if (this.child.connected) this.child.disconnect();
    await gone;
  }

  /** The helper keeps the daemon alive only while a command is out: the channel (for the
   * answer) and the process (for its exit, should it die before answering, which may come after
   * the channel has closed). */
  private refWhileBusy(): void {
    const busy = this.pending.size > 0;
    if (busy) this.child.ref();
    else this.child.unref();
    const channel = this.child.channel;
    if (channel === undefined || channel === null) return;
    if (busy) channel.ref();
    else channel.unref();
  }
}
