// The agent's picture of the datastore: profiles, pools and every endpoint of every host, kept
// up to date from watch events. Pure: events in, PolicyInput out, so what the agent programs is a
// function of the datastore alone and can be tested without a kernel.
import type { KeyValue } from '../datastore/datastore';
import type { Keys } from '../datastore/keys';
import { decodePool, type Pool } from '../ipam/pool';
import { errorMessage } from '../lib/errors';
import type { Logger } from '../lib/log';
import { parseStored } from '../model/codec';
import { Endpoint } from '../model/endpoint';
import { decodeProfile } from '../model/profile';
import { effectiveLabels } from '../policy/evaluate';
import type { PolicyModel } from '../policy/render';
import type { Labels, Profile } from '../policy/types';

function labelsOf(endpoint: Endpoint, profiles: ReadonlyMap<string, Profile>): Labels {
  return effectiveLabels(endpoint.profiles.map((name) => profiles.get(name)?.labelsToApply ?? {}), endpoint.labels);
}

/** What of an endpoint policy reads. */
function policyView(e: Endpoint): string {
  return JSON.stringify([e.id, e.node, e.hostInterface, e.ipv4, e.ipv6, e.profiles, e.labels, e.ready]);
}

export class PolicyState {
  private readonly profiles = new Map<string, Profile>();
  private readonly endpoints = new Map<string, Endpoint>();
  private readonly pools = new Map<string, Pool>();

  constructor(
    private readonly keys: Keys,
    private readonly node: string,
    private readonly log: Logger,
  ) {}

  /** Forget everything (before a resync from a fresh listing). */
  clear(): void {
    this.profiles.clear();
    this.endpoints.clear();
    this.pools.clear();
  }

  /** Applies one key's new value (undefined: deleted). Returns whether policy may have changed:
   * block and network keys, for example, do not matter to policy. A malformed record is logged
   * and treated as absent, so one bad key cannot stop the agent. */
  update(key: string, kv: KeyValue | undefined): boolean {
    const kind = this.kindOf(key);
    if (kind === undefined) return false;
    const map: Map<string, unknown> = kind === 'profile' ? this.profiles : kind === 'endpoint' ? this.endpoints : this.pools;
    if (kv === undefined) return map.delete(key);
    try {
      if (kind === 'profile') this.profiles.set(key, decodeProfile(kv));
      else if (kind === 'endpoint') {
        const before = this.endpoints.get(key);
        const after = parseStored(Endpoint, kv);
        this.endpoints.set(key, after);
        // Join records the workload's namespace on the endpoint; that is not policy, and Join
        // must not wait for an apply it caused for nothing.
        if (before !== undefined && policyView(before) === policyView(after)) return false;
      } else this.pools.set(key, decodePool(kv.value, kv.key));
    } catch (err) {
      this.log.error('ignoring %s: %s', key, errorMessage(err));
      map.delete(key);
    }
    return true;
  }

  private kindOf(key: string): 'profile' | 'endpoint' | 'pool' | undefined {
    if (key.startsWith(this.keys.profilesPrefix())) return 'profile';
    if (key.startsWith(this.keys.poolsPrefix())) return 'pool';
    if (key.startsWith(this.keys.nodesPrefix()) && key.includes('/endpoints/')) return 'endpoint';
    return undefined;
  }

  input(): PolicyModel {
    const profiles = new Map([...this.profiles.values()].map((p) => [p.name, p]));
    const all = [...this.endpoints.values()];
    const pools = [...this.pools.values()];
    return {
      localEndpoints: all
        .filter((e) => e.node === this.node)
        .map((e) => ({ id: e.id, hostIf: e.hostInterface, ipv4: e.ipv4, ipv6: e.ipv6, profiles: e.profiles, ready: e.ready })),
      // Addresses as stored (/32, /128): render's address parsing accepts the suffix.
      remoteAndLocalEndpoints: all.map((e) => ({ ipv4: e.ipv4, ipv6: e.ipv6, labels: labelsOf(e, profiles) })),
      profiles,
      natOutgoingPools: pools.filter((p) => p.natOutgoing).map((p) => p.cidr),
      allPools: pools.map((p) => p.cidr),
    };
  }
}
