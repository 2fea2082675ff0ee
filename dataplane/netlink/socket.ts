// The daemon's rtnetlink socket (native/netlink.c, built by `npm ci`): requests go to the kernel
// from libuv's thread pool, one transaction at a time per socket, so replies never interleave.
// When the addon is not built (no compiler when `npm ci` ran) nothing here is used and the
// dataplane runs `ip` as before; `netlinkUnavailable()` says why, for the start-up log.
import path from 'node:path';
import { errorMessage } from '../../lib/errors';
import { parseMessages, type Reply } from './messages';

interface Addon {
  open(netnsPath: string | null, timeoutMs: number): number;
  close(fd: number): void;
  transact(fd: number, messages: Buffer[], callback: (err: (Error & { code?: string }) | undefined, replies: Buffer[]) => void): void;
  strerror(errno: number): string;
}

/** How long the kernel may take to answer one message before the request fails. */
const ANSWER_TIMEOUT_MS = 10_000;
/** From dist/dataplane/netlink/ (and the managed plugin's copy of the same layout). */
const ADDON_PATH = path.join(__dirname, '../../../native/build/Release/calico_netlink.node');

let addon: Addon | undefined;
let loadError: string | undefined;

function loadAddon(): Addon | undefined {
  if (addon !== undefined || loadError !== undefined) return addon;
  if (process.env['CALICO_NETLINK'] === 'off') {
    loadError = 'CALICO_NETLINK=off';
    return undefined;
  }
  try {
    addon = require(ADDON_PATH) as Addon;
  } catch (err) {
    loadError = `${ADDON_PATH}: ${errorMessage(err)}`;
  }
  return addon;
}

/** Why the netlink path is not in use, or undefined when it is. */
export function netlinkUnavailable(): string | undefined {
  loadAddon();
  return addon === undefined ? loadError : undefined;
}

/** The outcome of one transaction: the replies to each message the kernel answered, in order
 * (it stops after the first refusal), and the error when a message got no answer at all. */
export interface TransactResult {
  replies: Reply[][];
  /** A send or receive failed (the answer did not come in time): the message after the last
   * answered one may or may not have taken effect. */
  lost?: Error;
}

export class RouteNetlink {
  private seq = Math.floor(Math.random() * 0x7fffffff);
  private queue: Promise<unknown> = Promise.resolve();
  private closed = false;

  private constructor(private readonly lib: Addon, private readonly fd: number) {}

  /** A socket in this namespace, or in the `ip netns` namespace given; undefined without the
   * addon. Throws when the addon is there but the socket cannot be opened. */
  static open(netns?: string): RouteNetlink | undefined {
    const lib = loadAddon();
    if (lib === undefined) return undefined;
    return new RouteNetlink(lib, lib.open(netns === undefined ? null : `/run/netns/${netns}`, ANSWER_TIMEOUT_MS));
  }

  nextSeq(): number {
    this.seq = (this.seq + 1) % 0x7fffffff;
    return this.seq;
  }

  /** The C library's text for an errno ("File exists"), as `ip` prints it. */
  errnoText(errno: number): string {
    return this.lib.strerror(errno);
  }

  /** Send the messages in order; see TransactResult. */
  transact(messages: Buffer[]): Promise<TransactResult> {
    if (this.closed) return Promise.resolve({ replies: [], lost: new Error('netlink socket closed') });
    const run = (): Promise<TransactResult> =>
      new Promise((resolve) => {
        this.lib.transact(this.fd, messages, (err, replies) => {
          resolve({ replies: replies.map(parseMessages), ...(err !== undefined && { lost: err }) });
        });
      });
    const result = this.queue.then(run, run);
    this.queue = result;
    return result;
  }

  /** Closes once the transactions queued so far are done. */
  async close(): Promise<void> {
    this.closed = true;
    await this.queue.catch(() => undefined);
    this.lib.close(this.fd);
  }
}
