// For tests of the endpoint service and the reconciler against a real datastore: an
// EndpointDataplane that records what it was asked (the kernel side is tested in
// dataplane.test.ts), and a wait for the endpoint's name on its allocation.
import type { AttachedVeth, EndpointDataplane, VethSpec } from '../../dataplane/endpoint-dataplane';
import { workloadGateways } from '../../dataplane/veth';
import type { Allocator } from '../../ipam/allocator';

/** EndpointService.create() names the endpoint on its allocations in the background: waits until
 * it has, so that neither races the test's reads nor outlives the store. */
export async function waitForNaming(allocator: Allocator, id: string, ips: readonly string[]): Promise<void> {
  for (const ip of ips) {
    const deadline = Date.now() + 5_000;
    while ((await allocator.findAllocation(ip))?.owner.endpointId !== id) {
      if (Date.now() > deadline) throw new Error(`endpoint ${id.slice(0, 12)} never recorded on ${ip}`);
      await new Promise((r) => setTimeout(r, 10));
    }
  }
}

/** Records each veth asked for; answers with the IPv6 gateway of the interface number, as the
 * Linux dataplane does. */
export class FakeDataplane implements EndpointDataplane {
  readonly attached: VethSpec[] = [];
  readonly detached: string[] = [];

  /** The next attach fails with this (as the kernel refuses a veth that exists). */
  failNext: Error | undefined;

  attach(spec: VethSpec): Promise<AttachedVeth> {
    const fail = this.failNext;
    this.failNext = undefined;
    if (fail !== undefined) return Promise.reject(fail);
    this.attached.push(spec);
    return Promise.resolve(spec.ipv6.length > 0 ? { ipv6Gateway: workloadGateways(spec.gatewayIndex).v6 } : {});
  }

  detach(hostIf: string): Promise<void> {
    this.detached.push(hostIf);
    return Promise.resolve();
  }

  startDetach(hostIf: string): void {
    this.detached.push(hostIf);
  }

  settled(): Promise<void> {
    return Promise.resolve();
  }
}

