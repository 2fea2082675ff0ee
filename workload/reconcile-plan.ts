// What the reconciler removes and releases on this host, decided from plain data (no I/O): the
// endpoint records of this host, the endpoints the front end (Docker) still knows, this host's
// endpoint veths in the kernel and every allocation in the datastore. The runner
// (workload/reconciler.ts) gathers the inputs and carries the plan out.
//
// Rules, each erring on the side of leaving things alone:
// - an endpoint record the front end no longer knows, older than the grace period (the front end
//   records an endpoint only after CreateEndpoint answers), is stale: its record, veth and routes
//   go. When the front end cannot be asked, no record is stale.
// - a veth of ours that no endpoint record names is a stray. The runner lists the kernel before
//   the records, and a record is always written before its veth, so a veth being created is never
//   taken for one; and one whose name matches an endpoint Docker knows is kept.
// - an allocation is released only when this host holds it through the front end (owner node is
//   this node, a handle the front end gives, kind `container`: never another host's, the swarm
//   manager's, a gateway, a reservation or calicoctl's), no live endpoint record uses its address
//   or is named on it, and it is older than the grace period (before CreateEndpoint it is a request
//   in flight). An allocation written before allocations carried their time is aged from when the
//   runner first saw it.
import type { Owner } from '../ipam/block';
import { addressPart } from '../ipam/cidr';
import { ENDPOINT_ID_CHARS } from '../dataplane/names';
import type { Endpoint } from '../model/endpoint';

export interface PlanAllocation {
  readonly ip: string;
  readonly owner: Owner;
}

export interface PlanInput {
  /** This host's node name. */
  readonly node: string;
  /** Milliseconds since the epoch. */
  readonly now: number;
  readonly graceMs: number;
  /** This host's endpoint records. */
  readonly records: readonly Endpoint[];
  /** Endpoint IDs the front end knows; undefined when it could not be asked. */
  readonly knownEndpoints: ReadonlySet<string> | undefined;
  /** Host ends of this host's endpoint veths in the kernel. */
  readonly links: readonly string[];
  /** The prefix of those names (`cali`): the rest is the start of the endpoint ID. */
  readonly hostIfPrefix: string;
  /** Every allocation read from the datastore (any holder). */
  readonly allocations: readonly PlanAllocation[];
  /** Whether a handle is the front end's (e.g. `docker:<PoolID>`). */
  readonly ownsHandle: (handle: string) => boolean;
  /** When the runner first saw an allocation without `allocatedAt` (key: allocationKey). */
  readonly firstSeen: ReadonlyMap<string, number>;
}

export interface StaleEndpoint {
  readonly endpoint: Endpoint;
  readonly reason: string;
}

export interface Release {
  readonly ip: string;
  /** The allocation exactly as read: the release is conditional on it being unchanged. */
  readonly owner: Owner;
  readonly reason: string;
}

export interface ReconcilePlan {
  readonly staleEndpoints: readonly StaleEndpoint[];
  readonly strayLinks: readonly string[];
  /** Veths no record names that belong to an endpoint Docker still knows: kept, reported. */
  readonly keptLinks: readonly string[];
  readonly releases: readonly Release[];
  /** Allocations of ours not in use but still within the grace period (pending). */
  readonly pending: readonly PlanAllocation[];
}

/** Identifies an allocation across passes for `firstSeen`. */
export function allocationKey(a: PlanAllocation): string {
  return `${a.ip} ${a.owner.node} ${a.owner.handle}`;
}

/** An unparseable time counts as long ago: the record or allocation is not in flight. */
function ageMs(time: string | undefined, now: number): number | undefined {
  if (time === undefined) return undefined;
  const t = Date.parse(time);
  return Number.isNaN(t) ? Number.POSITIVE_INFINITY : now - t;
}

/** Whether an allocation is the front end's on this host, i.e. the reconciler may release it. */
export function isOwnAllocation(owner: Owner, node: string, ownsHandle: (handle: string) => boolean): boolean {
  return owner.node === node && owner.kind === 'container' && ownsHandle(owner.handle);
}

export function planReconcile(input: PlanInput): ReconcilePlan {
  const { now, graceMs } = input;
  const ownRecords = input.records.filter((r) => r.node === input.node);
  const staleEndpoints: StaleEndpoint[] = [];
  const known = input.knownEndpoints;
  if (known !== undefined) {
    for (const r of ownRecords) {
      if (known.has(r.id)) continue;
      const age = ageMs(r.createdAt, now) ?? Number.POSITIVE_INFINITY;
      if (age < graceMs) continue;
      staleEndpoints.push({ endpoint: r, reason: 'its endpoint is gone from Docker' });
    }
  }
  const staleIds = new Set(staleEndpoints.map((s) => s.endpoint.id));
  const live = ownRecords.filter((r) => !staleIds.has(r.id));

  const named = new Set(ownRecords.map((r) => r.hostInterface));
  const unnamed = [...new Set(input.links)].filter((l) => !named.has(l)).sort();
  // A veth whose name matches an endpoint Docker still knows is a running workload's, whatever
  // happened to its record: left alone (and reported), never cut off.
  const knownPrefixes = [...(known ?? [])].map((id) => id.slice(0, ENDPOINT_ID_CHARS).toLowerCase());
  const ofKnown = (link: string): boolean => knownPrefixes.some((p) => link.endsWith(p) && link.length - p.length === input.hostIfPrefix.length);
  const strayLinks = unnamed.filter((l) => !ofKnown(l));
  const keptLinks = unnamed.filter(ofKnown);

  const liveIds = new Set(live.map((r) => r.id));
  const inUse = new Set(live.flatMap((r) => [...r.ipv4, ...r.ipv6].map(addressPart)));
  const releases: Release[] = [];
  const pending: PlanAllocation[] = [];
  for (const a of input.allocations) {
    if (!isOwnAllocation(a.owner, input.node, input.ownsHandle)) continue;
    if (inUse.has(a.ip)) continue;
    if (a.owner.endpointId !== undefined && liveIds.has(a.owner.endpointId)) continue;
    const age = ageMs(a.owner.allocatedAt, now) ?? now - (input.firstSeen.get(allocationKey(a)) ?? now);
    if (age < graceMs) {
      pending.push(a);
      continue;
    }
    const endpoint = a.owner.endpointId;
    const reason = endpoint === undefined
      ? 'allocated but no endpoint was ever recorded for it'
      : staleIds.has(endpoint)
        ? `its endpoint ${endpoint.slice(0, 12)} is gone`
        : `its endpoint ${endpoint.slice(0, 12)} has no record on ${input.node}`;
    releases.push({ ip: a.ip, owner: a.owner, reason });
  }
  return { staleEndpoints, strayLinks, keptLinks, releases, pending };
}
