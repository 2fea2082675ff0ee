// The agent's picture of the datastore: profiles, pools and every endpoint of every host, kept
// up to date from watch events. Pure: events in, PolicyInput out, so what the agent programs is a
// function of the datastore alone and can be tested without a kernel.
//
// The model is immutable and shares what did not change: input() returns the same model until an
// update changes policy, and a new model keeps the objects of every endpoint that did not change.
// The policy renderer's cache is keyed on those objects, so it redoes only what a change touches
// (policy/render-cache.ts).
import type { KeyValue } from '../datastore/datastore';
import type { Keys } from '../datastore/keys';
import { decodePool, type Pool } from '../ipam/pool';
import { errorMessage } from '../lib/errors';
import type { Logger } from '../lib/log';
import { parseStored } from '../model/codec';
import { Endpoint } from '../model/endpoint';
import { decodeProfile } from '../model/profile';
import { effectiveLabels } from '../policy/evaluate';
import type { LabelledEndpoint, PolicyEndpoint, PolicyModel } from '../policy/render';
import type { Labels, Profile } from '../policy/types';

/** What the model holds for one endpoint record, and what it was made from. */
interface EndpointView {
  readonly endpoint: Endpoint;
  /** The labelsToApply of its profiles, in its profile order, that its labels were made from. */
  readonly profileLabels: readonly Labels[];
  readonly local: PolicyEndpoint | undefined;
  readonly labelled: LabelledEndpoint;
}

function sameLabels(a: Labels, b: Labels): boolean {
  if (a === b) return true;
  const ka = Object.keys(a);
  if (ka.length !== Object.keys(b).length) return false;
  return ka.every((k) => Object.hasOwn(b, k) && a[k] === b[k]);
}

/** What of an endpoint policy reads. */
function policyView(e: Endpoint): string {
  return JSON.stringify([e.id, e.node, e.hostInterface, e.ipv4, e.ipv6, e.profiles, e.labels, e.ready]);
}

export class PolicyState {
  private readonly profiles = new Map<string, Profile>();
  private readonly endpoints = new Map<string, Endpoint>();
  private readonly pools = new Map<string, Pool>();
  /** By endpoint key, from the last input(). */
  private views = new Map<string, EndpointView>();
  /** The last input(), until an update changes policy. */
  private model: PolicyModel | undefined;
  /** The last input()'s profiles by name, until a profile changes. */
  private byName: ReadonlyMap<string, Profile> | undefined;

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
    this.model = undefined;
    this.byName = undefined;
  }

  /** Applies one key's new value (undefined: deleted). Returns whether policy may have changed:
   * block and network keys, for example, do not matter to policy. A malformed record is logged
   * and treated as absent, so one bad key cannot stop the agent. */
  update(key: string, kv: KeyValue | undefined): boolean {
    const changed = this.apply(key, kv);
    if (changed) this.model = undefined;
    if (changed && key.startsWith(this.keys.profilesPrefix())) this.byName = undefined;
    return changed;
  }

  private apply(key: string, kv: KeyValue | undefined): boolean {
    const kind = this.kindOf(key);
    if (kind === undefined) return false;
    const map: Map<string, unknown> = kind === 'profile' ? this.profiles : kind === 'endpoint' ? this.endpoints : this.pools;
    if (kv === undefined) return map.delete(key);
    try {
      if (kind === 'profile') this.profiles.set(key, decodeProfile(kv));
      else if (kind === 'endpoint') {
        const before = this.endpoints.get(key);
        const after = parseStored(Endpoint, kv);
        // Join records the workload's namespace on the endpoint; that is not policy, and Join
        // must not wait for an apply it caused for nothing. The record kept is the one the model
        // was made from (what policy reads of it is the same).
        if (before !== undefined && policyView(before) === policyView(after)) return false;
        this.endpoints.set(key, after);
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
    if (this.model !== undefined) return this.model;
    const profiles = (this.byName ??= new Map([...this.profiles.values()].map((p) => [p.name, p])));
    const views = new Map<string, EndpointView>();
    const localEndpoints: PolicyEndpoint[] = [];
    const remoteAndLocalEndpoints: LabelledEndpoint[] = [];
    for (const [key, e] of this.endpoints) {
      const profileLabels = e.profiles.map((name) => profiles.get(name)?.labelsToApply ?? {});
      let view = this.views.get(key);
      const same = view?.endpoint === e;
      if (view === undefined || !same || !view.profileLabels.every((l, i) => sameLabels(l, profileLabels[i] ?? {}))) {
        view = {
          endpoint: e,
          profileLabels,
          // What a local endpoint is does not depend on labels.
          local:
            same && view !== undefined
              ? view.local
              : e.node === this.node
                ? { id: e.id, hostIf: e.hostInterface, ipv4: e.ipv4, ipv6: e.ipv6, profiles: e.profiles, ready: e.ready }
                : undefined,
          // Addresses as stored (/32, /128): render's address parsing accepts the suffix.
          labelled: { ipv4: e.ipv4, ipv6: e.ipv6, labels: effectiveLabels(profileLabels, e.labels) },
        };
      }
      views.set(key, view);
      if (view.local !== undefined) localEndpoints.push(view.local);
      remoteAndLocalEndpoints.push(view.labelled);
    }
    this.views = views;
    const pools = [...this.pools.values()];
    this.model = {
      localEndpoints,
      remoteAndLocalEndpoints,
      profiles,
      natOutgoingPools: pools.filter((p) => p.natOutgoing).map((p) => p.cidr),
      allPools: pools.map((p) => p.cidr),
    };
    return this.model;
  }
}
