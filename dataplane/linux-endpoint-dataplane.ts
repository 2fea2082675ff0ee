// The Linux implementation of the driver's EndpointDataplane: veths, host routes and sysctls via
// iproute2 (dataplane/veth.ts).
import type { AttachedVeth, EndpointDataplane, VethSpec } from '../driver/endpoint-dataplane';
import { createEndpointVeth, ensureHostForwarding, removeEndpointVeth, type NetnsOption } from './veth';

export class LinuxEndpointDataplane implements EndpointDataplane {
  constructor(private readonly ns: NetnsOption = {}) {}

  async attach(spec: VethSpec): Promise<AttachedVeth> {
    // IPv6 forwarding is turned on only when an IPv6 endpoint needs it: on a host that configures
    // itself by router advertisements, forwarding=1 makes the kernel ignore them.
    if (spec.ipv6.length > 0) await ensureHostForwarding({ ipv6: true }, this.ns);
    const veth = await createEndpointVeth(spec, this.ns);
    return veth.gatewayIPv6 === undefined ? {} : { ipv6Gateway: veth.gatewayIPv6 };
  }

  async detach(hostIf: string): Promise<void> {
    await removeEndpointVeth(hostIf, this.ns);
  }
}
