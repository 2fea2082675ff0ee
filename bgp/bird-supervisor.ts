// Runs this host's BIRD: one per host, with its own configuration file, control socket, pid file
// and log under the daemon's BIRD directory (CALICO_BIRD_DIR), so it never meets Debian's `bird`
// service or its /run/bird/bird.ctl.
//
// Lifetime, decided for "a restart must not withdraw, a removal must": BIRD is started detached
// and outlives the daemon. A daemon restart or upgrade (or crash) leaves BIRD and its sessions
// alone; the next daemon finds it by its pid file, adopts it and reconfigures it, so
// peers see nothing (no BGP graceful restart is needed, and none is configured: with it, peers
// would keep a dead host's routes for the restart time). BIRD is stopped only when this host is
// taken out for good: its node record disappears (`calicoctl node remove`) while the daemon runs,
// or `calicoctl uninstall` on the host. Stopped with SIGTERM, BIRD closes its sessions with a
// Cease notification, and peers withdraw the routes at once.
//
// Configuration changes go through `bird -p` first (a file BIRD would refuse never replaces the
// running one) and then `birdc configure`: BIRD applies the difference without dropping sessions
// that did not change. BIRD is started only when no BIRD of ours runs (its pid file names a live
// `bird` with our socket); after a crash, again with a backoff from 1 s to 30 s.
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { run } from '../dataplane/exec';
import { errorMessage } from '../lib/errors';
import type { Logger } from '../lib/log';
import { BgpConfigError } from './bird-config';
import { birdAnswers, birdc } from './birdc';

const START_TIMEOUT_MS = 10_000;
const WATCH_INTERVAL_MS = 2_000;
const MIN_BACKOFF_MS = 1_000;
const MAX_BACKOFF_MS = 30_000;
/** Running this long resets the backoff. */
const HEALTHY_AFTER_MS = 60_000;
const STOP_TIMEOUT_MS = 5_000;

export interface BirdPaths {
  readonly dir: string;
  readonly config: string;
  readonly socket: string;
  readonly pidFile: string;
  readonly log: string;
}

export function birdPaths(dir: string): BirdPaths {
  return { dir, config: join(dir, 'bird.conf'), socket: join(dir, 'bird.ctl'), pidFile: join(dir, 'bird.pid'), log: join(dir, 'bird.log') };
}

/** What the BGP manager drives (a fake in unit tests). */
export interface BirdApplier {
  /** BIRD is to run exactly this configuration (started, adopted or reconfigured as needed). */
  apply(config: string): Promise<void>;
  /** This host is gone for good: stop BIRD, withdrawing its routes from every peer. */
  withdraw(): Promise<void>;
  resync(): void;
}

export class BirdSupervisor implements BirdApplier {
  readonly paths: BirdPaths;
  /** What BIRD should run; undefined: nothing asked yet, or withdrawn. */
  private desired: string | undefined;
  /** What the running BIRD was last given (undefined: unknown, so the next pass rewrites). */
  private applied: string | undefined;
  private checkFile = false;
  private child: ChildProcess | undefined;
  private watchTimer: NodeJS.Timeout | undefined;
  private busy: Promise<void> | undefined;
  private again = false;
  private backoffMs = MIN_BACKOFF_MS;
  private notBefore = 0;
  private startedAt = 0;
  private closed = false;
  private withdrawn = false;

  constructor(dir: string, private readonly log: Logger) {
    this.paths = birdPaths(dir);
  }

  /** Hands BIRD its configuration and returns: starting, adopting, reloading and retrying happen
   * in the background (and are logged), so a slow or failing BIRD never holds up the agent's
   * other managers, nor the daemon's start. */
  apply(config: string): Promise<void> {
    this.withdrawn = false;
    this.desired = config;
    this.watch();
    this.kick();
    return Promise.resolve();
  }

  async withdraw(): Promise<void> {
    if (this.withdrawn) return;
    this.withdrawn = true;
    this.desired = undefined;
    this.applied = undefined;
    this.stopWatching();
    await this.busy;
    if (await stopBird(this.paths)) this.log.info('BIRD stopped: this host\'s routes are withdrawn');
  }

  /** The next pass compares the file on disk with what BIRD should run (someone may have edited
   * it) and reloads if they differ. */
  resync(): void {
    this.checkFile = true;
  }

  /** Stop supervising; BIRD keeps running (a daemon restart must not withdraw routes). */
  async close(): Promise<void> {
    this.closed = true;
    this.stopWatching();
    await this.busy;
    this.child?.unref();
  }

  /** Resolves when BIRD runs the last configuration handed to it (tests, benchmarks). */
  async settled(): Promise<void> {
    while (this.busy !== undefined) await this.busy;
  }

  private kick(): void {
    if (this.busy !== undefined) {
      this.again = true;
      return;
    }
    this.busy = (async () => {
      do {
        this.again = false;
        await this.converge();
      } while (this.again && !this.closed && !this.withdrawn);
    })().finally(() => (this.busy = undefined));
  }

  private async converge(): Promise<void> {
    const config = this.desired;
    if (this.closed || this.withdrawn || config === undefined) return;
    // By its pid, not by asking its socket: a slow answer on a loaded host must never start a
    // second BIRD or restart a healthy one.
    const running = ourBirdPid(this.paths) !== undefined;
    if (!running && this.applied !== undefined) {
      this.applied = undefined;
      this.notBefore = Date.now() + this.backoffMs;
      this.log.warn('BIRD is not running: starting it again in %d ms', this.backoffMs);
      this.backoffMs = Math.min(this.backoffMs * 2, MAX_BACKOFF_MS);
    }
    if (running && this.checkFile) {
      this.checkFile = false;
      if (readText(this.paths.config) !== this.applied) this.applied = undefined;
    }
    if (running && config === this.applied) {
      if (Date.now() - this.startedAt > HEALTHY_AFTER_MS) this.backoffMs = MIN_BACKOFF_MS;
      return;
    }
    if (Date.now() < this.notBefore) return; // the watch timer comes back
    try {
      await this.applyNow(config, running);
      this.applied = config;
    } catch (err) {
      this.notBefore = Date.now() + this.backoffMs;
      this.backoffMs = Math.min(this.backoffMs * 2, MAX_BACKOFF_MS);
      this.log.error('BGP: %s; trying again', errorMessage(err));
    }
  }

  private async applyNow(config: string, running: boolean): Promise<void> {
    mkdirSync(this.paths.dir, { recursive: true, mode: 0o700 });
    const next = `${this.paths.config}.next`;
    writeFileSync(next, config, { mode: 0o600 });
    try {
      await run('bird', ['-p', '-c', next], 'check BIRD configuration');
    } catch (err) {
      rmSync(next, { force: true });
      throw new BgpConfigError(`BIRD refuses the rendered configuration (kept the running one): ${errorMessage(err)}`);
    }
    renameSync(next, this.paths.config);
    if (running) {
      const r = await birdc(this.paths.socket, ['configure']);
      if (!/Reconfigured|Reconfiguration in progress|queueing new config/.test(r.output)) {
        throw new Error(`birdc configure: ${r.output.trim() || `no answer (exit ${r.code ?? 'timeout'})`}`);
      }
      this.log.info(this.applied === undefined && this.startedAt === 0 ? 'BIRD adopted (pid %d) and reconfigured' : 'BIRD reconfigured', ourBirdPid(this.paths) ?? 0);
      if (this.startedAt === 0) this.startedAt = Date.now();
    } else {
      await this.start();
    }
  }

  private async start(): Promise<void> {
    rmSync(this.paths.socket, { force: true });
    // Detached, own session, no pipes: it must survive the daemon and never block on a closed
    // stdout. It logs to its own file (bird-config.ts).
    const child = spawn('bird', ['-f', '-c', this.paths.config, '-s', this.paths.socket, '-P', this.paths.pidFile], {
      detached: true,
      stdio: 'ignore',
    });
    this.child = child;
    let failed: string | undefined;
    child.once('error', (err) => (failed = err.message));
    child.once('exit', (code, signal) => {
      failed ??= `exited (${signal ?? code ?? '?'})`;
      if (this.child === child) this.child = undefined;
      if (!this.closed && !this.withdrawn) {
        this.log.warn('BIRD %s', failed);
        this.kick();
      }
    });
    child.unref();
    const deadline = Date.now() + START_TIMEOUT_MS;
    while (!(await birdAnswers(this.paths.socket))) {
      if (failed !== undefined || Date.now() > deadline) {
        // A slow one is left running: the next pass finds it by its pid and reconfigures it.
        throw new Error(`BIRD did not start (${failed ?? `no answer on its socket within ${START_TIMEOUT_MS / 1000} s`}); see ${this.paths.log}`);
      }
      await sleep(50);
    }
    this.startedAt = Date.now();
    this.log.info('BIRD started (pid %d, socket %s)', child.pid ?? 0, this.paths.socket);
  }

  private watch(): void {
    if (this.watchTimer !== undefined || this.closed) return;
    this.watchTimer = setInterval(() => this.kick(), WATCH_INTERVAL_MS);
    this.watchTimer.unref();
  }

  private stopWatching(): void {
    if (this.watchTimer !== undefined) clearInterval(this.watchTimer);
    this.watchTimer = undefined;
  }
}

function readText(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
}

/** Stops the BIRD of these paths if it runs (SIGTERM: it closes its sessions with a Cease; SIGKILL
 * after 5 s). Only a process named bird started with this socket is signalled. True if one ran. */
export async function stopBird(paths: BirdPaths): Promise<boolean> {
  const pid = ourBirdPid(paths);
  if (pid === undefined) return false;
  try {
    process.kill(pid, 'SIGTERM');
  } catch {
    return false;
  }
  const deadline = Date.now() + STOP_TIMEOUT_MS;
  while (ourBirdPid(paths) === pid) {
    if (Date.now() > deadline) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone meanwhile
      }
      await sleep(100);
      break;
    }
    await sleep(50);
  }
  rmSync(paths.socket, { force: true });
  return true;
}

/** The pid in the pid file, if that process is a live BIRD serving our socket. */
export function ourBirdPid(paths: BirdPaths): number | undefined {
  try {
    const pid = Number(readFileSync(paths.pidFile, 'utf8').trim());
    if (!Number.isInteger(pid) || pid <= 1) return undefined;
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    if (state === 'Z' || state === 'X') return undefined;
    const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    return argv[0]?.endsWith('bird') === true && argv.includes(paths.socket) ? pid : undefined;
  } catch {
    return undefined;
  }
}
