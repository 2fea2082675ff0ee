// What `calicoctl ipam check` finds and what `ipam release` may repair, decided from plain data
// (no I/O): every block, every endpoint record of every host, the registered hosts.
//
// It runs from any host against the shared datastore, so "an endpoint is gone" is judged from the
// endpoint records alone: a record left behind by a crash (its container gone) still counts as in
// use here; the reconciler on that record's host removes it (it asks Docker), after which the
// address shows up as leaked. The rules for an address are the reconciler's own (planReconcile is
// run once per holding host), with one addition: an address any host's record uses is never
// released, whoever holds it.
//
// Findings, per host:
// - address-without-endpoint: allocated, and no endpoint record uses it or is named on it.
//   Released only when the reconciler would release it (a Docker allocation of that host, past the
//   grace period); everything else says why not (the swarm manager's, a gateway, a reservation,
//   pending).
// - endpoint-without-allocation: a record uses an address no block holds, so it could be handed
//   out again. Repaired by allocating it to that endpoint (the `claim` repair), under the handle
//   Docker's ReleaseAddress will name, so it is freed normally when the container goes.
// - duplicate: one address used by several endpoint records. Never repaired automatically: which
//   container keeps it is the operator's decision.
// - orphan-block: a block affine to a host that is not registered any more. Repaired as `calicoctl
//   node remove` does (the host's addresses freed, its empty blocks deleted, the rest left to no
//   host), only when no record of that host exists and nothing the host holds is in use.
import { type Block, type Owner, endpointHandle, listAllocations, sameAttribute } from '../ipam/block';
import { addressPart } from '../ipam/cidr';
import type { Endpoint } from '../model/endpoint';
import { planReconcile, type PlanAllocation } from './reconcile-plan';

export type FindingKind = 'address-without-endpoint' | 'endpoint-without-allocation' | 'duplicate' | 'orphan-block';

/** release: free the address (if the allocation is unchanged); claim: allocate it to the endpoint
 * under `handle`; release-host: free what the vanished host holds; none: left to the operator. */
export type Repair = 'release' | 'claim' | 'release-host' | 'none';

export interface FindingEndpoint {
  readonly id: string;
  readonly node: string;
  readonly containerId?: string;
}

export interface Finding {
  readonly kind: FindingKind;
  /** The host the finding is about: the holder, the record's host, the block's affinity. */
  readonly host: string;
  readonly ip?: string;
  readonly block?: string;
  /** The allocation exactly as read (address findings). */
  readonly owner?: Owner;
  readonly endpoints?: readonly FindingEndpoint[];
  /** For a claim: the handle the address is allocated under. */
  readonly handle?: string;
  readonly repair: Repair;
  readonly reason: string;
}

export interface CheckInput {
  /** Milliseconds since the epoch. */
  readonly now: number;
  readonly graceMs: number;
  /** Hosts with a registration record. */
  readonly hosts: ReadonlySet<string>;
  readonly blocks: readonly Block[];
  /** Every host's endpoint records. */
  readonly records: readonly Endpoint[];
  /** Whether a handle is Docker's (`docker:<PoolID>`). */
  readonly ownsHandle: (handle: string) => boolean;
  /** The handle family Docker's ReleaseAddress would name for this endpoint's address (the claim
   * adds the endpoint to it); undefined when it cannot be told (its network's record is gone). */
  readonly claimHandle: (endpoint: Endpoint, ip: string) => string | undefined;
}

/** Whether an operator has something to do about the finding: everything but an address without
 * endpoint that is left alone by design (pending, the swarm manager's, a gateway, a reservation),
 * which the report lists so that every allocation without an endpoint is accounted for. */
export function needsAttention(f: Finding): boolean {
  return f.kind !== 'address-without-endpoint' || f.repair !== 'none';
}

/** Holders that are not hosts (the swarm manager, `@swarm`) start with '@'. */
const isHost = (node: string): boolean => !node.startsWith('@');

const addressesOf = (e: Endpoint): string[] => [...e.ipv4, ...e.ipv6].map(addressPart);

const describe = (e: Endpoint): FindingEndpoint => ({ id: e.id, node: e.node, ...(e.containerId !== undefined && { containerId: e.containerId }) });

const short = (id: string): string => id.slice(0, 12);

export function planIpamCheck(input: CheckInput): Finding[] {
  const { now, graceMs } = input;
  const users = new Map<string, Endpoint[]>();
  for (const r of input.records) for (const ip of addressesOf(r)) users.set(ip, [...(users.get(ip) ?? []), r]);
  const recordIds = new Set(input.records.map((r) => r.id));
  const allocations: (PlanAllocation & { readonly block: string })[] = input.blocks.flatMap((b) =>
    listAllocations(b).map((a) => ({ ip: a.ip, owner: a.owner, block: b.cidr })));
  const blockOf = new Map(allocations.map((a) => [a.ip, a.block]));
  const findings: Finding[] = [];

  // Addresses no record uses: the reconciler's plan for each holding host decides what is
  // released; the rest say why they stay.
  const unused = allocations.filter((a) => !users.has(a.ip) && !(a.owner.endpointId !== undefined && recordIds.has(a.owner.endpointId)));
  const holders = [...new Set(unused.map((a) => a.owner.node))].filter(isHost).sort();
  const decided = new Map<string, Finding>();
  for (const node of holders) {
    const plan = planReconcile({
      node,
      now,
      graceMs,
      records: input.records,
      knownEndpoints: undefined,
      links: [],
      hostIfPrefix: '',
      allocations: unused,
      ownsHandle: input.ownsHandle,
      firstSeen: new Map(),
    });
    for (const r of plan.releases) {
      decided.set(r.ip, { kind: 'address-without-endpoint', host: node, ip: r.ip, owner: r.owner, repair: 'release', reason: r.reason });
    }
    for (const p of plan.pending) {
      const reason = p.owner.allocatedAt === undefined
        ? 'no allocation time recorded (written by an older version): the reconciler on its host ages it from when it first sees it'
        : `allocated ${Math.round((now - Date.parse(p.owner.allocatedAt)) / 1000)}s ago, within the grace period of ${Math.round(graceMs / 1000)}s: a request in flight until CreateEndpoint records its endpoint`;
      decided.set(p.ip, { kind: 'address-without-endpoint', host: node, ip: p.ip, owner: p.owner, repair: 'none', reason });
    }
  }
  for (const a of unused) {
    const found = decided.get(a.ip);
    const base = { kind: 'address-without-endpoint' as const, host: a.owner.node, ip: a.ip, block: a.block, owner: a.owner };
    if (found !== undefined) {
      findings.push({ ...found, block: a.block });
      continue;
    }
    findings.push({ ...base, repair: 'none', reason: keptReason(a) });
  }

  for (const r of input.records) {
    if (Date.parse(r.createdAt) > now - graceMs) continue;
    for (const ip of addressesOf(r)) {
      if (blockOf.has(ip)) continue;
      const handle = input.claimHandle(r, ip);
      findings.push({
        kind: 'endpoint-without-allocation',
        host: r.node,
        ip,
        endpoints: [describe(r)],
        ...(handle === undefined
          ? { repair: 'none' as const, reason: `endpoint ${short(r.id)} uses ${ip} but no block holds it, and its network's record is gone, so the handle to allocate it under cannot be told` }
          : { handle: endpointHandle(handle, r.id), repair: 'claim' as const, reason: `endpoint ${short(r.id)} uses ${ip} but no block holds it: it could be handed out again` }),
      });
    }
  }

  for (const [ip, eps] of users) {
    const distinct = [...new Map(eps.map((e) => [e.id, e])).values()];
    if (distinct.length < 2) continue;
    const owner = allocations.find((a) => a.ip === ip)?.owner;
    const named = owner?.endpointId === undefined ? undefined : distinct.find((e) => e.id === owner.endpointId);
    findings.push({
      kind: 'duplicate',
      host: owner?.node ?? distinct[0]?.node ?? '',
      ip,
      ...(blockOf.has(ip) && { block: blockOf.get(ip) }),
      ...(owner !== undefined && { owner }),
      endpoints: distinct.map(describe),
      repair: 'none',
      reason: `${distinct.length} endpoints use it (${distinct.map((e) => `${short(e.id)} on ${e.node}`).join(', ')}): ` +
        (named === undefined ? 'remove all but one of their containers' : `the allocation names ${short(named.id)}; remove the other containers`) +
        ', then check again',
    });
  }

  const inUse = new Set(users.keys());
  for (const b of input.blocks) {
    const host = b.affinity;
    if (host === null || !isHost(host) || input.hosts.has(host)) continue;
    const records = input.records.filter((r) => r.node === host);
    const busy = allocations.filter((a) => a.owner.node === host && inUse.has(a.ip)).map((a) => a.ip);
    const why = `affine to host ${host}, which is not registered any more`;
    findings.push({
      kind: 'orphan-block',
      host,
      block: b.cidr,
      ...(records.length > 0
        ? { repair: 'none' as const, reason: `${why}; it still has ${records.length} endpoint record(s): 'calicoctl node remove ${host} --force' if it is gone for good` }
        : busy.length > 0
          ? { repair: 'none' as const, reason: `${why}; addresses it holds are in use (${busy.slice(0, 5).join(', ')})` }
          : { repair: 'release-host' as const, reason: `${why}: its addresses are freed, its empty blocks deleted, the rest left to no host` }),
    });
  }

  return findings.sort((x, y) => x.host.localeCompare(y.host) || x.kind.localeCompare(y.kind) || (x.ip ?? x.block ?? '').localeCompare(y.ip ?? y.block ?? ''));
}

/** Why an unused allocation the reconciler's rules never release stays. */
function keptReason(a: PlanAllocation): string {
  if (!isHost(a.owner.node)) {
    return "held by the swarm manager (its tasks', VIPs' and load balancers' addresses have no endpoint record): never released here; 'calicoctl ipam release-swarm' once the swarm is gone";
  }
  if (a.owner.kind === 'gateway') return 'a gateway address, not a container\'s: released with its network';
  return `held by ${a.owner.handle} (${a.owner.kind}), not through Docker: only its holder releases it`;
}

/** What --from-report does with one reported finding, decided against a check run now. */
export type RecheckOutcome =
  | { readonly action: 'repair'; readonly finding: Finding }
  | { readonly action: 'skip'; readonly reason: string };

/** Matches a reported finding with the same one found now: the state may have changed since the
 * report. Only a finding that is still there, still repairable, and (for a release) held by
 * exactly the allocation reported is repaired. */
export function recheck(reported: Finding, now: readonly Finding[], inUseBy: (ip: string) => readonly FindingEndpoint[]): RecheckOutcome {
  if (reported.repair === 'none') return { action: 'skip', reason: `not repairable: ${reported.reason}` };
  const same = now.find((f) => f.kind === reported.kind && f.ip === reported.ip && (reported.kind !== 'orphan-block' || f.block === reported.block) &&
    (reported.kind !== 'endpoint-without-allocation' || f.endpoints?.[0]?.id === reported.endpoints?.[0]?.id));
  if (same === undefined) {
    const users = reported.ip === undefined ? [] : inUseBy(reported.ip);
    if (reported.kind === 'address-without-endpoint' && users.length > 0) {
      return { action: 'skip', reason: `now in use by ${users.map((e) => `endpoint ${short(e.id)} on ${e.node}`).join(', ')}` };
    }
    return { action: 'skip', reason: 'no longer found (fixed or changed since the report)' };
  }
  if (same.repair !== reported.repair) return { action: 'skip', reason: `changed since the report: ${same.reason}` };
  if (reported.kind === 'address-without-endpoint' && (reported.owner === undefined || same.owner === undefined || !sameAttribute(reported.owner, same.owner))) {
    return { action: 'skip', reason: 'its allocation changed since the report (released and handed out again, or its endpoint recorded)' };
  }
  return { action: 'repair', finding: same };
}
