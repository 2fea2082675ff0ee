// Kernel operations for an endpoint's veth pair (the Join/Leave hot path).
//
// Layout (Calico's): the host end `cali<11 of endpoint ID>` carries no IPv4 address; it answers ARP
// for the container's gateway 169.254.1.1 by proxy ARP and routes the container's /32 (/128) to
// it. The container end is created as `tmp<11>` and moved/renamed by Docker after Join returns.
//
// IPv6 gateway: the container's IPv6 gateway is the host end's link-local address. The kernel only
// generates a link-local once the link has carrier, i.e. after Docker has moved the peer into the
// container and brought it up, which is after Join must already have answered with GatewayIPv6.
// So the host end gets a fixed MAC (ee:ee:ee:ee:ee:ee, as Calico does), automatic address
// generation is switched off, and the EUI-64 address of that MAC, fe80::ecee:eeff:feee:eeee, is
// added explicitly with `nodad`: it is known before the call, usable at once (never tentative) and
// the same on every host end, which is fine because link-local addresses are scoped to one link.
//
// Every function takes `{ netns }` so tests can run it in a throwaway namespace. In the host
// namespace sysctls are written to <procRoot>/sys directly (no process; procRoot is /proc unless
// the host's /proc is mounted elsewhere, as in a managed plugin whose own /proc/sys is read-only);
// in a namespace they go through `ip netns exec <ns> sysctl`.

import { existsSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { readFile, writeFile } from 'node:fs/promises';
import { DataplaneError, errorMessage, InvalidRequestError } from '../lib/errors.js';
import { assertIfName } from '../lib/interface-names.js';
import { CommandError, run, runWithInput } from './exec.js';
import * as netlinkMessage from './netlink/rtnetlink.js';
import type { VethAdd } from './netlink/rtnetlink.js';
import { refusalOf, type KernelRefusal } from './netlink/wire.js';
import { NetlinkSocket } from './netlink/socket.js';
import {
  assertNetnsName,
  assertUnicastMac,
  type HostAddress,
  parseHostAddress,
} from './names.js';

export interface NetnsOption {
  /** Run inside this `ip netns` namespace instead of the caller's (tests). */
  netns?: string;
  /** Where /proc of the caller's namespace is mounted (default /proc): sysctls are written under
   * `<procRoot>/sys` when no netns is given. */
  procRoot?: string;
  /** Run `ip` even when the netlink addon is loaded (tests run both paths). */
  useIp?: boolean;
}

/** Fixed MAC of every host end. */
export const HOST_VETH_MAC = 'ee:ee:ee:ee:ee:ee';
/** EUI-64 link-local address of HOST_VETH_MAC: the containers' IPv6 gateway. */
export const HOST_LINK_LOCAL_V6 = 'fe80::ecee:eeff:feee:eeee';
/** Proxy-ARP'd IPv4 gateway the containers route through. */
export const CONTAINER_GATEWAY_V4 = '169.254.1.1';
/** Interfaces one workload can have on our networks (its gateways are 169.254.1.1-.200). */
export const MAX_WORKLOAD_INTERFACES = 200;

/** The gateways of a workload's interface number `index` (0: its first network). A container on
 * several networks routes each interface's gateway as a /32 (/128) through that interface, so each
 * interface needs gateways of its own; index 0 keeps Calico's 169.254.1.1 and the host end's
 * EUI-64 link-local. The host end answers the IPv4 one by proxy ARP and carries the IPv6 one. */
export function workloadGateways(index: number): { readonly v4: string; readonly v6: string } {
  if (!Number.isInteger(index) || index < 0 || index >= MAX_WORKLOAD_INTERFACES) {
    throw new InvalidRequestError(`workload interface number ${index} is out of range 0-${MAX_WORKLOAD_INTERFACES - 1}`);
  }
  if (index === 0) return { v4: CONTAINER_GATEWAY_V4, v6: HOST_LINK_LOCAL_V6 };
  return { v4: `169.254.1.${index + 1}`, v6: `fe80::ecee:eeff:fe00:${index.toString(16)}` };
}

const IP = 'ip';
const ENODEV = osConstants.errno.ENODEV;
const SYSCTL = 'sysctl';
const DEFAULT_PROC_ROOT = '/proc';
const MIN_MTU = 68;
const MAX_MTU = 65535;

export interface EndpointVethSpec {
  hostIf: string;
  /** Container end as created in the host namespace (Docker renames it when moving it). */
  peerIf: string;
  mtu: number;
  /** Container IPv4 addresses (bare or /32). */
  ipv4?: string[];
  /** Container IPv6 addresses (bare or /128). */
  ipv6?: string[];
  /** MAC for the container end. */
  mac?: string;
  /** The workload's interface number (workloadGateways); 0 when omitted. */
  gatewayIndex?: number;
}

export interface EndpointVeth {
  hostIf: string;
  peerIf: string;
  /** Container's IPv6 gateway, when IPv6 addresses were given. */
  gatewayIPv6?: string;
}

interface Undo {
  what: string;
  fn: () => Promise<unknown>;
}

/**
 * Create the veth pair, bring the host end up, set its sysctls and add the host routes. On any
 * failure everything this call created is deleted and the error is rethrown with context; a link
 * that already existed under the same name is never touched.
 *
 * Processes spawned in the host namespace: none over netlink (dataplane/netlink/); else one
 * `ip -batch` (two for IPv6 when new interfaces start with IPv6 disabled, since an address cannot
 * be added before disable_ipv6=0).
 */
export async function createEndpointVeth(
  spec: EndpointVethSpec,
  opts: NetnsOption = {},
): Promise<EndpointVeth> {
  const hostIf = assertIfName(spec.hostIf, 'host interface name');
  const peerIf = assertIfName(spec.peerIf, 'peer interface name');
  if (hostIf === peerIf) {
    throw new InvalidRequestError(`host and peer interface names are both ${hostIf}`);
  }
  if (!Number.isInteger(spec.mtu) || spec.mtu < MIN_MTU || spec.mtu > MAX_MTU) {
    throw new InvalidRequestError(`invalid MTU ${spec.mtu}: expected an integer ${MIN_MTU}-${MAX_MTU}`);
  }
  const mac = spec.mac === undefined ? undefined : assertUnicastMac(spec.mac);
  const v4 = uniqueAddresses(spec.ipv4 ?? [], 4);
  const v6 = uniqueAddresses(spec.ipv6 ?? [], 6);
  const netns = opts.netns === undefined ? undefined : assertNetnsName(opts.netns);
  const gateways = workloadGateways(spec.gatewayIndex ?? 0);
  const what = `veth ${hostIf} (peer ${peerIf})`;

  const linkSteps: VethStep[] = [
    { kind: 'add', veth: { hostIf, peerIf, mtu: spec.mtu, hostMac: HOST_VETH_MAC, ...(mac !== undefined && { peerMac: mac }) } },
    // Before `up`, so the kernel never generates an address of its own next to ours.
    { kind: 'addrgenmode-none' },
    // Up before the routes: IPv4 refuses a route through an admin-down device.
    { kind: 'up' },
    ...v4.map((a): VethStep => ({ kind: 'route', address: a.address, cidr: a.cidr, scopeLink: true })),
  ];
  const v6Steps: VethStep[] = v6.length === 0 ? [] : [
    { kind: 'address6', address: HOST_LINK_LOCAL_V6 },
    ...(gateways.v6 === HOST_LINK_LOCAL_V6 ? [] : [{ kind: 'address6', address: gateways.v6 } as const]),
    ...v6.map((a): VethStep => ({ kind: 'route', address: a.address, cidr: a.cidr, scopeLink: false })),
  ];
  const sysctls: Array<[string, string]> = [
    [`net/ipv4/conf/${hostIf}/proxy_arp`, '1'],
    // Without this the kernel delays proxy ARP replies to broadcast requests by up to 0.8 s.
    [`net/ipv4/neigh/${hostIf}/proxy_delay`, '0'],
  ];
  if (v6.length > 0) {
    sysctls.push(
      [`net/ipv6/conf/${hostIf}/disable_ipv6`, '0'],
      // The host end is a router port: never autoconfigure from what a container announces.
      [`net/ipv6/conf/${hostIf}/accept_ra`, '0'],
      [`net/ipv6/conf/${hostIf}/proxy_ndp`, '1'],
    );
  }

  // New devices copy `default` devconf. If IPv6 is enabled there, the whole ip part fits in one
  // batch; otherwise the IPv6 address must wait for disable_ipv6=0 on the new device.
  let oneBatch = v6Steps.length === 0;
  const procSys = procSysOf(opts);
  if (!oneBatch && netns === undefined) {
    const dflt = await readSysctlFile(procSys, 'net/ipv6/conf/default/disable_ipv6');
    if (dflt === undefined) {
      throw new DataplaneError(`create ${what}: IPv6 is not available on this host (no ${procSys}/net/ipv6)`);
    }
    oneBatch = dflt === '0';
  }

  const ctx: StepContext = { hostIf, peerIf, netns, undo: [], ...(opts.useIp === true && { useIp: true }) };
  try {
    await runSteps(oneBatch ? [...linkSteps, ...v6Steps] : linkSteps, `create ${what}`, ctx);
    await writeSysctls(procSys, sysctls, netns, `configure ${what}`);
    if (!oneBatch) await runSteps(v6Steps, `configure IPv6 on ${what}`, ctx);
  } catch (err) {
    throw await rollback(err, ctx.undo);
  } finally {
    await ctx.netlink?.socket.close();
  }
  return { hostIf, peerIf, ...(v6.length > 0 ? { gatewayIPv6: gateways.v6 } : {}) };
}

function uniqueAddresses(values: readonly string[], family: 4 | 6): HostAddress[] {
  if (!Array.isArray(values)) {
    throw new InvalidRequestError(`IPv${family} addresses must be a list`);
  }
  const seen = new Set<string>();
  return values.map((v) => {
    const a = parseHostAddress(v, family);
    if (seen.has(a.cidr)) throw new InvalidRequestError(`address ${a.address} is listed twice`);
    seen.add(a.cidr);
    return a;
  });
}

async function rollback(err: unknown, undo: Undo[]): Promise<Error> {
  const failures: string[] = [];
  for (const step of undo.reverse()) {
    try {
      await step.fn();
    } catch (undoErr) {
      failures.push(`${step.what}: ${errorMessage(undoErr)}`);
    }
  }
  if (failures.length === 0) return err instanceof Error ? err : new DataplaneError(errorMessage(err));
  return new DataplaneError(
    `${errorMessage(err)} (rollback also failed: ${failures.join('; ')})`,
    { cause: err },
  );
}

/** One kernel change of createEndpointVeth, on the host end unless it says otherwise. */
type VethStep =
  | { kind: 'add'; veth: VethAdd }
  | { kind: 'addrgenmode-none' }
  | { kind: 'up' }
  | { kind: 'address6'; address: string }
  | { kind: 'route'; address: string; cidr: string; scopeLink: boolean };

interface StepContext {
  hostIf: string;
  peerIf: string;
  netns: string | undefined;
  undo: Undo[];
  useIp?: true;
  /** The netlink socket and the host end's index, once a step has needed them. */
  netlink?: { socket: NetlinkSocket; index?: number };
}

/** The step as an `ip` command line: what `ip -batch` runs, and how errors name the step. */
function ipLine(step: VethStep, hostIf: string): string {
  switch (step.kind) {
    case 'add': {
      const v = step.veth;
      return `link add ${v.hostIf} mtu ${v.mtu} address ${v.hostMac} type veth peer name ${v.peerIf} mtu ${v.mtu}${v.peerMac === undefined ? '' : ` address ${v.peerMac}`}`;
    }
    case 'addrgenmode-none':
      return `link set dev ${hostIf} addrgenmode none`;
    case 'up':
      return `link set dev ${hostIf} up`;
    case 'address6':
      return `addr add ${step.address}/64 dev ${hostIf} nodad`;
    case 'route':
      return `route add ${step.cidr} dev ${hostIf}${step.scopeLink ? ' scope link' : ''}`;
  }
}

/** The steps in order, stopping at the first that fails; over netlink when the addon is loaded
 * (and the caller did not ask for `ip`), else through one `ip -batch`. If a step created the
 * veth, a delete of the host end goes on the undo list. Deleting the host end deletes the peer
 * and every route through it. */
async function runSteps(steps: VethStep[], op: string, ctx: StepContext): Promise<void> {
  if (ctx.useIp !== true) {
    if (ctx.netlink === undefined) {
      const socket = openNetlink(ctx.netns);
      if (socket !== undefined) ctx.netlink = { socket };
    }
    if (ctx.netlink !== undefined) return netlinkSteps(ctx.netlink, steps, op, ctx);
  }
  return ipBatch(steps.map((s) => ipLine(s, ctx.hostIf)), op, ctx);
}

function deleteHostEnd(ctx: StepContext): Undo {
  return {
    what: `delete ${ctx.hostIf}`,
    fn: () => removeEndpointVeth(ctx.hostIf, { ...(ctx.netns !== undefined && { netns: ctx.netns }), ...(ctx.useIp === true && { useIp: true }) }),
  };
}

async function netlinkSteps(nl: { socket: NetlinkSocket; index?: number }, steps: VethStep[], op: string, ctx: StepContext): Promise<void> {
  const fail = (step: VethStep | undefined, detail: string, cause?: unknown): DataplaneError =>
    new DataplaneError(step === undefined ? `${op}: ${detail}` : `${op}: ${ipLine(step, ctx.hostIf)}: ${detail}`, cause === undefined ? undefined : { cause });
  const refusedText = (r: KernelRefusal): string =>
    `RTNETLINK answers: ${nl.socket.errnoText(r.errno)}${r.detail === undefined ? '' : ` (${r.detail})`}`;
  let rest = steps;
  const first = steps[0];
  if (first?.kind === 'add' || nl.index === undefined) {
    // The index is what routes and addresses name the link by: ask for it right after creating.
    const adds = first?.kind === 'add' ? [netlinkMessage.newVeth(nl.socket.nextSeq(), first.veth)] : [];
    const result = await nl.socket.transact([...adds, netlinkMessage.getLink(nl.socket.nextSeq(), ctx.hostIf)]);
    if (adds.length > 0) {
      const added = result.replies[0];
      if (added === undefined) {
        // No answer: find out whether the pair we asked for exists.
        if (await isOurVeth(ctx.hostIf, ctx.peerIf, ctx.netns)) ctx.undo.push(deleteHostEnd(ctx));
        throw fail(first, errorMessage(result.lost), result.lost);
      }
      const refused = refusalOf(added);
      if (refused !== undefined) throw fail(first, refusedText(refused));
      ctx.undo.push(deleteHostEnd(ctx));
      rest = steps.slice(1);
    }
    const found = result.replies[adds.length];
    const refused = found === undefined ? undefined : refusalOf(found);
    const index = found === undefined ? undefined : netlinkMessage.linkIndex(found);
    if (index === undefined) {
      throw fail(undefined, `look up ${ctx.hostIf}: ${refused !== undefined ? refusedText(refused) : errorMessage(result.lost ?? 'no link in the answer')}`, result.lost);
    }
    nl.index = index;
  }
  if (rest.length === 0) return;
  const index = nl.index;
  const messages = rest.map((step) => {
    const seq = nl.socket.nextSeq();
    switch (step.kind) {
      case 'add':
        throw new DataplaneError(`${op}: a veth can only be created first`);
      case 'addrgenmode-none':
        return netlinkMessage.addrGenModeNone(seq, index);
      case 'up':
        return netlinkMessage.linkUp(seq, index);
      case 'address6':
        return netlinkMessage.newAddress6NoDad(seq, index, step.address, 64);
      case 'route':
        return netlinkMessage.newHostRoute(seq, index, step.address, step.scopeLink);
    }
  });
  const result = await nl.socket.transact(messages);
  for (const [i, step] of rest.entries()) {
    const replies = result.replies[i];
    if (replies === undefined) throw fail(step, `no answer from the kernel: ${errorMessage(result.lost)}`, result.lost);
    const refused = refusalOf(replies);
    if (refused !== undefined) throw fail(step, refusedText(refused));
  }
}

/**
 * Run lines through `ip -batch -`. `ip` stops at the first failing line and reports
 * "Command failed -:N"; lines before N took effect.
 */
async function ipBatch(lines: string[], op: string, ctx: StepContext): Promise<void> {
  const createsLink = lines[0]?.startsWith('link add ') ?? false;
  const netns = ctx.netns;
  try {
    await runWithInput(IP, [...nsArgs(netns), '-batch', '-'], lines.join('\n') + '\n', op);
  } catch (err) {
    if (!(err instanceof CommandError)) throw err;
    const m = /Command failed -:(\d+)/.exec(err.stderr);
    const failedLine = m?.[1] === undefined ? undefined : Number(m[1]);
    if (createsLink) {
      if (failedLine === undefined) {
        // Killed or crashed: find out whether the pair we asked for exists.
        if (await isOurVeth(ctx.hostIf, ctx.peerIf, netns)) ctx.undo.push(deleteHostEnd(ctx));
      } else if (failedLine > 1) {
        ctx.undo.push(deleteHostEnd(ctx));
      }
    }
    const line = failedLine === undefined ? undefined : lines[failedLine - 1];
    const detail = err.stderr.replace(/\n?Command failed -:\d+\s*$/, '').trim() || err.message;
    throw new DataplaneError(line ? `${op}: ${line}: ${detail}` : `${op}: ${detail}`, { cause: err });
  }
  if (createsLink) ctx.undo.push(deleteHostEnd(ctx));
}

/** A veth named hostIf whose peer (in the same namespace) is peerIf, with our MAC. */
async function isOurVeth(hostIf: string, peerIf: string, netns: string | undefined): Promise<boolean> {
  const links = await showLink(hostIf, netns, true);
  const l = links?.[0];
  return l !== undefined && l.link === peerIf && l.address === HOST_VETH_MAC && l.linkinfo?.info_kind === 'veth';
}

/** A link as `ip -j -d link show` reports it (the fields used here). */
export interface LinkInfo {
  ifname: string;
  ifindex: number;
  link?: string;
  address?: string;
  mtu?: number;
  flags?: string[];
  operstate?: string;
  linkinfo?: { info_kind?: string };
}

async function showLink(name: string, netns: string | undefined, details = false): Promise<LinkInfo[] | undefined> {
  try {
    const { stdout } = await run(
      IP,
      [...nsArgs(netns), '-j', ...(details ? ['-d'] : []), 'link', 'show', 'dev', name],
      `show link ${name}`,
    );
    return parseJson<LinkInfo[]>(stdout, `show link ${name}`);
  } catch (err) {
    if (err instanceof CommandError && /^Device ".*" does not exist\.?$/m.test(err.stderr)) return undefined;
    throw err;
  }
}

/** Link state as `ip -j -d link show` reports it (with details such as linkinfo), or undefined if
 * there is no such link. */
export async function linkInfo(name: string, opts: NetnsOption = {}): Promise<LinkInfo | undefined> {
  assertIfName(name);
  const links = await showLink(name, checkedNetns(opts), true);
  return links?.[0];
}

export async function linkExists(name: string, opts: NetnsOption = {}): Promise<boolean> {
  return (await linkInfo(name, opts)) !== undefined;
}

/**
 * Delete the host end (and with it the peer and the routes). Idempotent: a link that is already
 * gone (the container's namespace was destroyed, or a repeated Leave) is success. Returns whether
 * this call deleted it. Only the kernel's "Cannot find device" is swallowed.
 */
export async function removeEndpointVeth(hostIf: string, opts: NetnsOption = {}): Promise<boolean> {
  assertIfName(hostIf, 'host interface name');
  const netns = checkedNetns(opts);
  // In our own namespace sysfs tells at no cost whether there is anything to delete: DeleteEndpoint
  // after Leave, and repeated teardowns, then spawn nothing.
  if (netns === undefined && !existsSync(`/sys/class/net/${hostIf}`)) return false;
  const nl = opts.useIp === true ? undefined : openNetlink(netns);
  if (nl !== undefined) {
    try {
      const result = await nl.transact([netlinkMessage.delLink(nl.nextSeq(), hostIf)]);
      const replies = result.replies[0];
      if (replies === undefined) throw new DataplaneError(`delete veth ${hostIf}: no answer from the kernel: ${errorMessage(result.lost)}`, { cause: result.lost });
      const refused = refusalOf(replies);
      if (refused === undefined) return true;
      if (refused.errno === ENODEV) return false;
      throw new DataplaneError(`delete veth ${hostIf}: RTNETLINK answers: ${nl.errnoText(refused.errno)}`);
    } finally {
      await nl.close();
    }
  }
  try {
    await run(IP, [...nsArgs(netns), 'link', 'del', 'dev', hostIf], `delete veth ${hostIf}`);
    return true;
  } catch (err) {
    if (err instanceof CommandError && /^Cannot find device "/m.test(err.stderr)) return false;
    throw err;
  }
}

/** Host ends of endpoint veths: veths named `<prefix>...` carrying our MAC, so an interface
 * of anything else (another plugin's veth that happens to share the prefix) is never listed. */
export async function listEndpointVeths(prefix: string, opts: NetnsOption = {}): Promise<string[]> {
  const netns = checkedNetns(opts);
  const { stdout } = await run(IP, [...nsArgs(netns), '-j', 'link', 'show', 'type', 'veth'], 'list veths');
  const links = stdout.trim() === '' ? [] : parseJson<LinkInfo[]>(stdout, 'list veths');
  return links.filter((l) => l.ifname.startsWith(prefix) && l.address === HOST_VETH_MAC).map((l) => l.ifname);
}

export interface RouteInfo {
  family: 4 | 6;
  /** As ip prints it: host routes without a prefix, `default`, or a CIDR. */
  dst: string;
  scope?: string;
  protocol?: string;
  gateway?: string;
  flags?: string[];
}

/** Routes in the main table through `hostIf`, both families. A missing device has no routes. */
export async function routesFor(hostIf: string, opts: NetnsOption = {}): Promise<RouteInfo[]> {
  assertIfName(hostIf, 'interface name');
  const netns = checkedNetns(opts);
  const out: RouteInfo[] = [];
  for (const family of [4, 6] as const) {
    let stdout: string;
    try {
      ({ stdout } = await run(
        IP,
        [...nsArgs(netns), '-j', `-${family}`, 'route', 'show', 'dev', hostIf],
        `list IPv${family} routes of ${hostIf}`,
      ));
    } catch (err) {
      if (err instanceof CommandError && /^Cannot find device "/m.test(err.stderr)) return [];
      throw err;
    }
    const routes = stdout.trim() === '' ? [] : parseJson<Array<Omit<RouteInfo, 'family'>>>(stdout, 'list routes');
    for (const r of routes) out.push({ family, ...r });
  }
  return out;
}

/**
 * Turn on IPv4 (and optionally IPv6) forwarding. Idempotent: reads first and writes only what is
 * off. Returns the keys it changed.
 */
export async function ensureHostForwarding(
  want: { ipv6: boolean },
  opts: NetnsOption = {},
): Promise<string[]> {
  const netns = checkedNetns(opts);
  const keys = ['net/ipv4/ip_forward', ...(want.ipv6 ? ['net/ipv6/conf/all/forwarding'] : [])];
  const procSys = procSysOf(opts);
  const current = await readSysctls(procSys, keys, netns, 'read forwarding settings');
  const toWrite = keys.filter((_, i) => current[i] !== '1');
  if (toWrite.length > 0) {
    await writeSysctls(procSys, toWrite.map((k) => [k, '1']), netns, 'enable forwarding');
  }
  return toWrite.map((k) => k.replaceAll('/', '.'));
}

// --- helpers ---------------------------------------------------------------------------------

/** A netlink socket of its own for one operation, in the host namespace or a test namespace, so
 * that a veth deletion (which holds its socket until the kernel has freed the pair, tens of
 * milliseconds) never delays another container's Join; opening one costs microseconds. Undefined
 * without the addon, or when the socket cannot be opened: `ip` then reports the problem in its
 * own words. */
function openNetlink(netns: string | undefined): NetlinkSocket | undefined {
  try {
    return NetlinkSocket.open('route', netns);
  } catch {
    return undefined;
  }
}

/** `<procRoot>/sys`; procRoot must be absolute (the configuration checks it; this guards tests). */
function procSysOf(opts: NetnsOption): string {
  const root = opts.procRoot ?? DEFAULT_PROC_ROOT;
  if (!root.startsWith('/')) throw new InvalidRequestError(`proc root must be an absolute path, got '${root}'`);
  return `${root.replace(/\/+$/, '')}/sys`;
}

function checkedNetns(opts: NetnsOption): string | undefined {
  return opts.netns === undefined ? undefined : assertNetnsName(opts.netns);
}

function nsArgs(netns: string | undefined): string[] {
  return netns === undefined ? [] : ['-n', netns];
}

function parseJson<T>(text: string, op: string): T {
  try {
    return JSON.parse(text) as T;
  } catch (err) {
    throw new DataplaneError(`${op}: unexpected output from ip: ${errorMessage(err)}`, { cause: err });
  }
}

/** Keys use '/' separators: interface names may contain '.', which sysctl's dotted form would
 * split. Keys are built only from validated names. */
async function readSysctlFile(procSys: string, key: string): Promise<string | undefined> {
  try {
    return (await readFile(`${procSys}/${key}`, 'utf8')).trim();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new DataplaneError(`read ${key.replaceAll('/', '.')}: ${errorMessage(err)}`, { cause: err });
  }
}

async function readSysctls(procSys: string, keys: string[], netns: string | undefined, op: string): Promise<Array<string | undefined>> {
  if (netns === undefined) return Promise.all(keys.map((k) => readSysctlFile(procSys, k)));
  const { stdout } = await run(IP, ['netns', 'exec', netns, SYSCTL, '-n', ...keys], op);
  const values = stdout.split('\n').map((s) => s.trim());
  return keys.map((_, i) => values[i]);
}

async function writeSysctls(procSys: string, entries: Array<[string, string]>, netns: string | undefined, op: string): Promise<void> {
  if (netns !== undefined) {
    await run(IP, ['netns', 'exec', netns, SYSCTL, '-q', '-w', ...entries.map(([k, v]) => `${k}=${v}`)], op);
    return;
  }
  // Independent files: write them all at once.
  await Promise.all(
    entries.map(async ([key, value]) => {
      try {
        await writeFile(`${procSys}/${key}`, value);
      } catch (err) {
        throw new DataplaneError(`${op}: set ${key.replaceAll('/', '.')}=${value}: ${errorMessage(err)}`, { cause: err });
      }
    }),
  );
}
