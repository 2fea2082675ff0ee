// The Linux implementation of the driver's EndpointDataplane: veths, host routes and sysctls via
// iproute2 (dataplane/veth.ts).
//
// Deleting a veth pair takes the kernel tens of milliseconds, but most of that comes after the
// part that matters: within `ip link del`, the kernel first takes the pair down, flushes every
// route through it (IPv4 at NETDEV_DOWN, IPv6 at NETDEV_UNREGISTER), frees both names, and
// removes the sysfs entries; only then, after releasing the RTNL lock, does it wait for RCU
// callbacks and references (netdev_run_todo) before `ip` exits. So in the host namespace detach
// answers as soon as /sys/class/net/<hostIf> is gone (the address may then be handed out again
// and the name reused) and leaves the rest of the deletion running, tracked: attach of the same
// name, a second detach and settled() (daemon shutdown, tests) wait for it.
import { existsSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { errorMessage } from '../lib/errors';
import { assertIfName } from '../lib/interface-names';
import { logger } from '../lib/log';
import type { AttachedVeth, EndpointDataplane, VethSpec } from './endpoint-dataplane';
import { createEndpointVeth, ensureHostForwarding, removeEndpointVeth, type NetnsOption } from './veth';

const log = logger('dataplane');

/** How often detach looks whether the kernel has unlisted the interface. */
const UNLISTED_POLL_MS = 1;

export class LinuxEndpointDataplane implements EndpointDataplane {
  /** Deletions in progress, by interface. They never reject: a failure is logged here and
   * reported to the caller by detach, which tries again. */
  private readonly removing = new Map<string, Promise<'failed' | 'done'>>();
  /** IPv6 forwarding was found or turned on once: skip the check on later attaches. Nothing of
   * ours turns it off again. */
  private ipv6Forwarding = false;

  constructor(private readonly ns: NetnsOption = {}) {}

  async attach(spec: VethSpec): Promise<AttachedVeth> {
    await this.removing.get(spec.hostIf);
    // IPv6 forwarding is turned on only when an IPv6 endpoint needs it: on a host that configures
    // itself by router advertisements, forwarding=1 makes the kernel ignore them.
    if (spec.ipv6.length > 0 && !this.ipv6Forwarding) {
      await ensureHostForwarding({ ipv6: true }, this.ns);
      this.ipv6Forwarding = true;
    }
    const veth = await createEndpointVeth(spec, this.ns);
    return veth.gatewayIPv6 === undefined ? {} : { ipv6Gateway: veth.gatewayIPv6 };
  }

  async detach(hostIf: string): Promise<void> {
    // Validated before it becomes part of a sysfs path.
    assertIfName(hostIf, 'host interface name');
    const removal = this.startRemoval(hostIf);
    let outcome: 'failed' | 'done' | undefined;
    if (this.ns.netns === undefined) {
      // Our own namespace: sysfs shows when the kernel has unlisted the pair.
      void removal.then((o) => (outcome = o));
      while (outcome === undefined && existsSync(`/sys/class/net/${hostIf}`)) {
        await Promise.race([removal, sleep(UNLISTED_POLL_MS)]);
      }
      // Unlisted while the deletion goes on, or finished.
      if (outcome !== 'failed') return;
    } else if ((await removal) === 'done') {
      return;
    }
    // The deletion failed: try once more here, so the caller gets the error.
    await removeEndpointVeth(hostIf, this.ns);
  }

  startDetach(hostIf: string): void {
    assertIfName(hostIf, 'host interface name');
    void this.startRemoval(hostIf);
  }

  async settled(): Promise<void> {
    while (this.removing.size > 0) await Promise.all(this.removing.values());
  }

  /** The deletion of hostIf in progress, or a new one. */
  private startRemoval(hostIf: string): Promise<'failed' | 'done'> {
    const current = this.removing.get(hostIf);
    if (current !== undefined) return current;
    const removal = removeEndpointVeth(hostIf, this.ns).then(
      () => 'done' as const,
      (err: unknown) => {
        log.warn('removing veth %s failed (detach tries again): %s', hostIf, errorMessage(err));
        return 'failed' as const;
      },
    ).finally(() => this.removing.delete(hostIf));
    this.removing.set(hostIf, removal);
    return removal;
  }
}
