// The Linux implementation of the driver's EndpointDataplane: veths, host routes and sysctls via
// iproute2 (dataplane/veth.ts).
import { errorMessage } from '../lib/errors';
import { logger } from '../lib/log';
import type { AttachedVeth, EndpointDataplane, VethSpec } from './endpoint-dataplane';
import { createEndpointVeth, ensureHostForwarding, removeEndpointVeth, type NetnsOption } from './veth';

const log = logger('dataplane');

export class LinuxEndpointDataplane implements EndpointDataplane {
  /** Removals started by Leave, by interface. */
  private readonly removing = new Map<string, Promise<void>>();
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
    await this.removing.get(hostIf);
    await removeEndpointVeth(hostIf, this.ns);
  }

  startDetach(hostIf: string): void {
    if (this.removing.has(hostIf)) return;
    // A failure here is not lost: detach() (DeleteEndpoint) removes the veth again and reports.
    const removal = removeEndpointVeth(hostIf, this.ns).then(
      () => undefined,
      (err: unknown) => log.warn('removing %s after Leave failed (DeleteEndpoint retries): %s', hostIf, errorMessage(err)),
    ).finally(() => this.removing.delete(hostIf));
    this.removing.set(hostIf, removal);
  }
}
