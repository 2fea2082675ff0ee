// calicoctl ipam check / ipam release: gathers every block, every host's endpoint records, the
// registered hosts and the networks, lets workload/ipam-check-plan.ts decide, and repairs only
// what a check run at repair time still finds repairable (the state may have changed since the
// report was written).
import { readFile } from 'node:fs/promises';
import { stringify } from 'yaml';
import { ANY_POOL_ID, dockerHandle, isDockerHandle } from '../driver/ipam-driver';
import { addressPart, containsIp, formatIp, normalizeCidr, parseCidr, parseIp } from '../ipam/cidr';
import { ConflictError, InvalidRequestError, NotFoundError, errorMessage } from '../lib/errors';
import { array, decode, object, optional, str } from '../lib/validate';
import { parseStored } from '../model/codec';
import type { Endpoint } from '../model/endpoint';
import { Network } from '../model/network';
import { needsAttention, planIpamCheck, recheck, type Finding, type FindingEndpoint, type FindingKind } from '../workload/ipam-check-plan';
import type { Context, Handler } from './context';
import { listEndpoints } from './ipam-commands';
import { renderTable } from './output';

export interface IpamCheckReport {
  readonly kind: 'IpamCheckReport';
  readonly checkedAt: string;
  /** NODENAME of the host the check ran on (it judges every host from the datastore alone). */
  readonly checkedFrom: string;
  readonly graceSeconds: number;
  readonly hosts: readonly string[];
  readonly findings: readonly Finding[];
}

interface CheckState {
  readonly findings: Finding[];
  readonly records: Endpoint[];
  readonly hosts: string[];
}

async function runCheck(ctx: Context): Promise<CheckState> {
  const nodesPrefix = ctx.keys.nodesPrefix();
  // Blocks before records: a container going away loses its record before its address, so a
  // record read after its allocation was freed cannot be taken for one in use without an
  // allocation (and one being created is young, which the plan leaves alone).
  const [nodeKeys, networks, blocks] = await Promise.all([
    ctx.store.list(nodesPrefix),
    ctx.store.list(ctx.keys.networksPrefix()),
    ctx.allocator.listBlocks(),
  ]);
  const records = await listEndpoints(ctx);
  const hosts = nodeKeys.items.filter((kv) => kv.key.endsWith('/info')).map((kv) => kv.key.slice(nodesPrefix.length).split('/')[0] ?? '');
  const byId = new Map<string, Network>();
  for (const kv of networks.items) {
    try {
      const n = parseStored(Network, kv);
      byId.set(n.id, n);
    } catch {
      // an unreadable network record: its endpoints' handle cannot be told, which the finding says
    }
  }
  const findings = planIpamCheck({
    now: Date.now(),
    graceMs: ctx.graceMs,
    hosts: new Set(hosts),
    blocks: blocks.map((b) => b.block),
    records,
    ownsHandle: isDockerHandle,
    claimHandle: (e, ip) => claimHandle(byId.get(e.networkId), ip),
  });
  return { findings, records, hosts };
}

/** The handle Docker's ReleaseAddress names for an address of this network: `docker:` and the
 * PoolID RequestPool answered (the pool's CIDR with --subnet, CalicoPoolIPv4/6 without). */
function claimHandle(network: Network | undefined, ip: string): string | undefined {
  if (network === undefined) return undefined;
  const address = parseIp(ip);
  for (const pool of address.family === 4 ? network.ipv4Pools : network.ipv6Pools) {
    let cidr: string;
    try {
      cidr = normalizeCidr(pool);
    } catch {
      continue;
    }
    if (cidr === '0.0.0.0/0' || cidr === '::/0') return dockerHandle(ANY_POOL_ID[address.family]);
    if (containsIp(parseCidr(cidr), address)) return dockerHandle(cidr);
  }
  return undefined;
}

const LABEL: Record<FindingKind, string> = {
  'address-without-endpoint': 'address without endpoint',
  'endpoint-without-allocation': 'endpoint without allocation',
  duplicate: 'duplicate',
  'orphan-block': 'block of a removed host',
};

function report(ctx: Context, state: CheckState): IpamCheckReport {
  return {
    kind: 'IpamCheckReport',
    checkedAt: new Date().toISOString(),
    checkedFrom: ctx.allocator.node,
    graceSeconds: Math.round(ctx.graceMs / 1000),
    hosts: [...state.hosts].sort(),
    findings: state.findings,
  };
}

function inUseBy(records: readonly Endpoint[]): (ip: string) => FindingEndpoint[] {
  return (ip) => records.filter((r) => [...r.ipv4, ...r.ipv6].some((a) => addressPart(a) === ip))
    .map((r) => ({ id: r.id, node: r.node, ...(r.containerId !== undefined && { containerId: r.containerId }) }));
}

/** Carries out one repair; returns the line to print. Every write is conditional (a release on
 * the allocation being exactly the one read, a claim on the address being free). */
async function repair(ctx: Context, f: Finding): Promise<string> {
  switch (f.repair) {
    case 'release': {
      if (f.ip === undefined || f.owner === undefined) throw new InvalidRequestError('a release names an address and its holder');
      const outcome = await ctx.allocator.release({ ip: f.ip, requester: { node: f.owner.node, handle: f.owner.handle }, ifOwner: f.owner });
      if (outcome.status !== 'released') throw new ConflictError(`${f.ip} changed meanwhile (${outcome.status}): left alone`);
      return `released ${f.ip} (held by ${f.owner.handle} on ${f.owner.node}): ${f.reason}`;
    }
    case 'claim': {
      const endpoint = f.endpoints?.[0];
      if (f.ip === undefined || f.handle === undefined || endpoint === undefined) throw new InvalidRequestError('a claim names an address, an endpoint and a handle');
      await ctx.allocator.assignIp({
        ip: f.ip,
        owner: {
          node: endpoint.node,
          handle: f.handle,
          kind: 'container',
          endpointId: endpoint.id,
          ...(endpoint.containerId !== undefined && { containerId: endpoint.containerId }),
          allocatedAt: new Date().toISOString(),
        },
      });
      return `allocated ${f.ip} to endpoint ${endpoint.id.slice(0, 12)} on ${endpoint.node} (${f.handle}): it was in use without an allocation`;
    }
    case 'release-host': {
      const { blocksReleased, addressesReleased } = await ctx.allocator.releaseHost(f.host);
      return `released host ${f.host} from its blocks (block ${f.block ?? ''}): ${blocksReleased} block(s), ${addressesReleased} address(es) freed`;
    }
    case 'none':
      throw new ConflictError(f.reason);
  }
}

const OwnerDecoder = object({ node: str, handle: str, kind: str, endpointId: optional(str), containerId: optional(str), allocatedAt: optional(str) });
const FindingDecoder = object({
  kind: str,
  host: str,
  ip: optional(str),
  block: optional(str),
  owner: optional(OwnerDecoder),
  endpoints: optional(array(object({ id: str, node: str, containerId: optional(str) }))),
  handle: optional(str),
  repair: str,
  reason: str,
});
const ReportDecoder = object({ kind: str, findings: array(FindingDecoder) });
const KINDS: readonly string[] = Object.keys(LABEL);
const REPAIRS: readonly string[] = ['release', 'claim', 'release-host', 'none'];
const OWNER_KINDS: readonly string[] = ['container', 'gateway', 'reserved'];

function parseReport(text: string, file: string): Finding[] {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new InvalidRequestError(`${file} is not JSON (write it with 'calicoctl ipam check -o json > ${file}'): ${errorMessage(err)}`);
  }
  const decoded = decode(ReportDecoder, raw);
  if (decoded.kind !== 'IpamCheckReport') throw new InvalidRequestError(`${file} is not an ipam check report (kind '${decoded.kind}')`);
  return decoded.findings.map((f, i) => {
    if (!KINDS.includes(f.kind) || !REPAIRS.includes(f.repair) || (f.owner !== undefined && !OWNER_KINDS.includes(f.owner.kind))) {
      throw new InvalidRequestError(`${file}: finding ${i} has an unknown kind, repair or owner kind`);
    }
    if (f.ip !== undefined) parseIp(f.ip, `finding ${i} ip`);
    return f as Finding;
  });
}

function renderFindings(state: CheckState, format: Context['format'], full: IpamCheckReport): string {
  if (format === 'json') return JSON.stringify(full, null, 2);
  if (format === 'yaml') return stringify(full).trimEnd();
  if (state.findings.length === 0) return `no findings (${state.hosts.length} host(s) checked)`;
  return renderTable([
    { header: 'HOST', value: (f: Finding) => f.host },
    { header: 'FINDING', value: (f) => LABEL[f.kind] },
    { header: 'ADDRESS', value: (f) => f.ip ?? f.block ?? '' },
    { header: 'REPAIR', value: (f) => f.repair },
    { header: 'WHY', value: (f) => f.reason },
  ], state.findings);
}

/** `ipam check`'s exit code when a finding needs attention: 1 is every command's failure, so a
 * script can tell "the check found something" from "the check could not run". */
export const EXIT_FINDINGS = 3;

export const ipamCheckCommands: Record<string, Handler> = {
  async 'ipam check'(ctx, args) {
    if (args.length !== 0) throw new InvalidRequestError('usage: calicoctl ipam check [-o table|json|yaml]');
    const state = await runCheck(ctx);
    ctx.io.out(renderFindings(state, ctx.format, report(ctx, state)));
    return state.findings.some(needsAttention) ? EXIT_FINDINGS : 0;
  },

  async 'ipam release'(ctx, args) {
    const usage = 'usage: calicoctl ipam release --ip <address> | --from-report <file>';
    const { ip, fromReport } = ctx.flags;
    if (args.length !== 0 || (ip === undefined) === (fromReport === undefined)) throw new InvalidRequestError(usage);
    if (ip !== undefined) {
      const text = formatIp(parseIp(ip, '--ip'));
      const state = await runCheck(ctx);
      const found = state.findings.find((f) => f.kind === 'address-without-endpoint' && f.ip === text);
      if (found === undefined) {
        const users = inUseBy(state.records)(text);
        if (users.length > 0) {
          throw new ConflictError(`${text} is in use by ${users.map((u) => `endpoint ${u.id.slice(0, 12)}${u.containerId === undefined ? '' : ` (container ${u.containerId.slice(0, 12)})`} on ${u.node}`).join(', ')}: not released; remove the container instead`);
        }
        if ((await ctx.allocator.findAllocation(text)) === undefined) throw new NotFoundError(`${text} is not allocated`);
        throw new ConflictError(`${text} is in use: not released`);
      }
      if (found.repair !== 'release') throw new ConflictError(`${text} is not released: ${found.reason}`);
      ctx.io.out(await repair(ctx, found));
      return;
    }
    const file = fromReport ?? '';
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch (err) {
      throw new InvalidRequestError(`cannot read ${file}: ${errorMessage(err)}`);
    }
    const reported = parseReport(text, file);
    let repaired = 0;
    let skipped = 0;
    for (const entry of reported) {
      // A fresh check for each entry: an earlier repair (a host released) can change later ones.
      const state = await runCheck(ctx);
      const outcome = recheck(entry, state.findings, inUseBy(state.records));
      const what = `${LABEL[entry.kind]} ${entry.ip ?? entry.block ?? ''} (${entry.host})`;
      if (outcome.action === 'skip') {
        skipped++;
        ctx.io.out(`skipped ${what}: ${outcome.reason}`);
        continue;
      }
      try {
        ctx.io.out(await repair(ctx, outcome.finding));
        repaired++;
      } catch (err) {
        skipped++;
        ctx.io.out(`skipped ${what}: ${errorMessage(err)}`);
      }
    }
    ctx.io.out(`${repaired} repaired, ${skipped} left as they are`);
  },
};
