// Runs this host's BIRD: one per host, with its own configuration file, control socket, pid file
// and log under the daemon's BIRD directory (CALICO_BIRD_DIR), so it never meets Debian's `bird`
// service or its /run/bird/bird.ctl.
//
// Lifetime, decided for "a restart must not withdraw, a removal must": BIRD is started detached
// and outlives the daemon. A daemon restart or upgrade (or crash) leaves BIRD and its sessions
// alone; the next daemon finds it answering on the socket, adopts it and reconfigures it, so
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
  /** BIRD runs with exactly this configuration (started, adopted or reconfigured as needed). */
  apply(config: string): Promise<void>;
  /** This host is gone for good: stop BIRD, withdrawing its routes from every peer. */
  withdraw(): Promise<void>;
  resync(): void;
}

export class BirdSupervisor implements BirdApplier {
  readonly paths: BirdPaths;
  private applied: string | undefined;
  private child: ChildProcess | undefined;
  private watchTimer: NodeJS.Timeout | undefined;
  private backoffMs = MIN_BACKOFF_MS;
  private startedAt = 0;
  private restarting: Promise<void> | undefined;
  private closed = false;
  private withdrawn = false;

  constructor(dir: string, private readonly log: Logger) {
    this.paths = birdPaths(dir);
  }

  async apply(config: string): Promise<void> {
    this.withdrawn = false;
    // By its pid, not by asking its socket: a slow answer on a loaded host must never start a
    // second BIRD or restart a healthy one.
    const running = ourBirdPid(this.paths) !== undefined;
    if (running && config === this.applied) return;
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
      this.log.info(this.applied === undefined ? 'BIRD adopted (pid %d) and reconfigured' : 'BIRD reconfigured', ourBirdPid(this.paths) ?? 0);
    } else {
      await this.start();
    }
    this.applied = config;
    this.watch();
  }

  async withdraw(): Promise<void> {
    if (this.withdrawn) return;
    this.withdrawn = true;
    this.applied = undefined;
    this.stopWatching();
    if (await stopBird(this.paths)) this.log.info('BIRD stopped: this host\'s routes are withdrawn');
  }

  /** The next apply writes and reloads even if the text did not change. */
  resync(): void {
    this.applied = undefined;
  }

  /** Stop supervising; BIRD keeps running (a daemon restart must not withdraw routes). */
  close(): void {
    this.closed = true;
    this.stopWatching();
    this.child?.unref();
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
      if (!this.closed && !this.withdrawn) this.log.warn('BIRD %s', failed);
    });
    child.unref();
    const deadline = Date.now() + START_TIMEOUT_MS;
    while (!(await birdAnswers(this.paths.socket))) {
      if (failed !== undefined || Date.now() > deadline) {
        // A slow one is left running: the next apply finds it by its pid and reconfigures it.
        throw new Error(`BIRD did not start (${failed ?? `no answer on its socket within ${START_TIMEOUT_MS / 1000} s`}); see ${this.paths.log}`);
      }
      await sleep(50);
    }
    this.startedAt = Date.now();
    this.log.info('BIRD started (pid %d, socket %s)', child.pid ?? 0, this.paths.socket);
  }

  private watch(): void {
    if (this.watchTimer !== undefined || this.closed) return;
    this.watchTimer = setInterval(() => {
      if (this.restarting === undefined) this.restarting = this.check().finally(() => (this.restarting = undefined));
    }, WATCH_INTERVAL_MS);
    this.watchTimer.unref();
  }

  private stopWatching(): void {
    if (this.watchTimer !== undefined) clearInterval(this.watchTimer);
    this.watchTimer = undefined;
  }

  private async check(): Promise<void> {
    if (this.closed || this.withdrawn || this.applied === undefined) return;
    if (ourBirdPid(this.paths) !== undefined) {
      if (Date.now() - this.startedAt > HEALTHY_AFTER_MS) this.backoffMs = MIN_BACKOFF_MS;
      return;
    }
    const wait = this.backoffMs;
    this.backoffMs = Math.min(this.backoffMs * 2, MAX_BACKOFF_MS);
    this.log.warn('BIRD is not running: starting it again in %d ms', wait);
    await sleep(wait);
    if (this.closed || this.withdrawn || ourBirdPid(this.paths) !== undefined) return;
    try {
      await this.start();
    } catch (err) {
      this.log.error('%s', errorMessage(err));
    }
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
