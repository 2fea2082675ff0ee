// The daemon's netlink sockets (native/netlink.c through dataplane/native-addon.ts): rtnetlink
// for veths, addresses and routes, netfilter for ipset members. Requests go to the kernel from
// libuv's thread pool, one transaction at a time per socket, so replies never interleave. Without
// the addon NetlinkSocket.open answers undefined and the dataplane runs `ip` and `ipset` instead.
import { netnsPathOf } from '../names';
import { nativeAddon, type NativeAddon } from '../native-addon';
import { parseMessages, type Reply } from './wire';

/** How long the kernel may take to answer one message before the request fails. */
const ANSWER_TIMEOUT_MS = 10_000;
/** <linux/netlink.h> */
const PROTOCOLS = { route: 0, netfilter: 12 } as const;

/** The outcome of one transaction: the replies to each message the kernel answered, in order
 * (it stops after the first refusal), and the error when a message got no answer at all. */
export interface TransactResult {
  replies: Reply[][];
  /** A send or receive failed (the answer did not come in time): the message after the last
   * answered one may or may not have taken effect. */
  lost?: Error;
}

export class NetlinkSocket {
  private seq = Math.floor(Math.random() * 0x7fffffff);
  private queue: Promise<unknown> = Promise.resolve();
  private closed = false;

  private constructor(private readonly lib: NativeAddon, private readonly fd: number) {}

  /** A socket in this namespace, or in the `ip netns` namespace given; undefined without the
   * addon. Throws when the addon is there but the socket cannot be opened. */
  static open(protocol: keyof typeof PROTOCOLS, netns?: string): NetlinkSocket | undefined {
    const lib = nativeAddon();
    if (lib === undefined) return undefined;
    return new NetlinkSocket(lib, lib.open(netns === undefined ? null : netnsPathOf(netns), ANSWER_TIMEOUT_MS, PROTOCOLS[protocol]));
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
