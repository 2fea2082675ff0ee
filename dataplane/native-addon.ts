// The native addon (native/netlink.c, built by `npm ci` with node-gyp): an rtnetlink socket and a
// process starter that does not fork the daemon. Optional: without it (no compiler when `npm ci`
// ran, or CALICO_NATIVE=false: useNative) the dataplane runs `ip` and starts tools from the exec
// helper, and `nativeUnavailable()` says why, for the start-up log.
import path from 'node:path';
import { errorMessage } from '../lib/errors';

/** What spawn reports: the outputs and how the process ended. */
export interface NativeSpawnResult {
  stdout: Buffer;
  stderr: Buffer;
  /** posix_spawn failed (ENOENT: no such tool); nothing ran. */
  spawnErrno?: number;
  /** The network namespace could not be entered; nothing ran. */
  netnsErrno?: number;
  exitCode?: number;
  /** The signal that ended it. */
  signal?: number;
  /** Killed by us: the timeout passed, or the output went over the limit. */
  killed?: boolean;
  overLimit?: boolean;
}

export interface NativeAddon {
  open(netnsPath: string | null, timeoutMs: number, protocol: number): number;
  close(fd: number): void;
  transact(fd: number, messages: Buffer[], callback: (err: (Error & { code?: string }) | undefined, replies: Buffer[]) => void): void;
  strerror(errno: number): string;
  spawn(file: string, args: string[], input: Buffer, timeoutMs: number, maxBufferBytes: number, callback: (result: NativeSpawnResult) => void, netnsPath: string | null): void;
}

/** From dist/dataplane/ (and the managed plugin's copy of the same layout). */
const ADDON_PATH = path.join(__dirname, '../../native/build/Release/calico_netlink.node');

let addon: NativeAddon | undefined;
let loadError: string | undefined;
let enabled = true;

/** Whether the addon may be used at all (CALICO_NATIVE). */
export function useNative(on: boolean): void {
  enabled = on;
}

export function nativeAddon(): NativeAddon | undefined {
  if (!enabled) return undefined;
  if (addon !== undefined || loadError !== undefined) return addon;
  try {
    addon = require(ADDON_PATH) as NativeAddon;
  } catch (err) {
    loadError = `${ADDON_PATH}: ${errorMessage(err)}`;
  }
  return addon;
}

/** Why the addon is not in use, or undefined when it is. */
export function nativeUnavailable(): string | undefined {
  if (!enabled) return 'CALICO_NATIVE=false';
  nativeAddon();
  return addon === undefined ? loadError : undefined;
}
