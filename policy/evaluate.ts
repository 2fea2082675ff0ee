// The meaning of profile rules for one packet, as a pure function: what `calicoctl policy explain`
// reports, and the specification the iptables renderer must implement. Keep the two in step; the
// kernel tests compare them.
//
// Semantics:
// - A packet from a workload endpoint is checked against that endpoint's egress rules, then a
//   packet to a workload endpoint against that endpoint's ingress rules. A side that is not a
//   workload endpoint (the host, an outside address) has no rules and is not checked. When egress
//   drops the packet, ingress is never reached.
// - One direction: the endpoint's profiles in order; within a profile its rules in order. A
//   matching `log` rule logs and evaluation continues; the first matching `allow` accepts (this
//   direction is done) and the first matching `deny` drops. When no rule of a profile decides, the
//   next profile is tried; when no profile allowed, the packet is dropped. An endpoint without
//   profiles drops everything in both directions. A profile that does not exist has no rules.
// - A rule matches when every criterion it has matches:
//   protocol: equal IP protocol numbers (tcp=6, udp=17, icmp=1, icmpv6=58, sctp=132), so names
//     and numbers are interchangeable;
//   icmp {type, code?}: the packet's ICMP type (and code, if given); notICMP: the negation. A
//     packet without icmpType is an echo request (ping): type 8 (ICMP) or 128 (ICMPv6), code 0;
//   source.* criteria apply to the packet's source address and port, destination.* to its
//   destination, in both directions;
//   nets: the address is inside one of the CIDRs; notNets: inside none of them. A nets or notNets
//     list with no CIDR of the packet's IP family makes the whole rule inapplicable to that family
//     (as Calico's Felix renders it: such a rule is left out of the other family's table);
//   selector: the address belongs to a workload endpoint whose effective labels match;
//     notSelector: it does not (so every non-endpoint address satisfies notSelector);
//   ports: the port lies in one of the ranges; notPorts: in none. An unknown port (not given)
//     lies in no range.
import { containsIp, parseCidr, tryParseIp, type Cidr, type IpAddress } from '../ipam/cidr';
import { InvalidRequestError } from '../lib/errors';
import { parseSelector, type Selector } from './selector';
import { protocolNumber, type Action, type EntityRule, type IcmpMatch, type Labels, type PortRange, type Profile, type Protocol, type Rule } from './types';

export interface Packet {
  readonly protocol: Protocol;
  readonly srcIp: string;
  readonly dstIp: string;
  readonly srcPort?: number;
  readonly dstPort?: number;
  readonly icmpType?: number;
  readonly icmpCode?: number;
}

/** A workload endpoint as policy sees it. `labels` are the effective labels (effectiveLabels()). */
export interface EndpointDescription {
  readonly ips: readonly string[];
  readonly labels: Labels;
  readonly profiles: readonly string[];
}

export type ProfileLookup = (name: string) => Profile | undefined;

export type Direction = 'ingress' | 'egress';

export interface RuleRef {
  readonly profile: string;
  readonly direction: Direction;
  /** 0-based, as in spec.ingress[i]. */
  readonly index: number;
  readonly action: Action;
}

export interface Decision {
  readonly verdict: 'allowed' | 'denied' | 'no-match' | 'not-checked' | 'not-reached';
  /** Whether the packet gets past this direction. */
  readonly allowed: boolean;
  /** The allow or deny rule that decided; absent when no rule did. */
  readonly rule?: RuleRef;
  /** Log rules the packet matched on the way, in order. */
  readonly logged: readonly RuleRef[];
  readonly reason: string;
}

export interface Explanation {
  readonly allowed: boolean;
  readonly egress: Decision;
  readonly ingress: Decision;
}

/** An endpoint's labels: those its profiles apply, overridden by its own. Between profiles the
 * earlier one wins, as in Calico (an endpoint's first profile is its primary one). */
export function effectiveLabels(profileLabels: readonly Labels[], endpointLabels: Labels): Labels {
  const out: Record<string, string> = {};
  for (const labels of [...profileLabels].reverse()) Object.assign(out, labels);
  return Object.assign(out, endpointLabels);
}

const ECHO_REQUEST: Readonly<Record<number, number>> = { 1: 8, 58: 128 };

interface Side {
  readonly ip: IpAddress;
  readonly endpoint: EndpointDescription | undefined;
  readonly port: number | undefined;
}

interface Context {
  readonly protocol: number;
  readonly icmpType: number | undefined;
  readonly icmpCode: number | undefined;
  readonly src: Side;
  readonly dst: Side;
  readonly selectors: Map<string, Selector>;
  readonly cidrs: Map<string, Cidr>;
}

function address(text: string, what: string): IpAddress {
  const ip = tryParseIp(text);
  if (ip === undefined) throw new InvalidRequestError(`packet ${what} ${JSON.stringify(text)} is not an IP address`);
  return ip;
}

function checkRange(value: number | undefined, what: string, max: number): void {
  if (value !== undefined && (!Number.isInteger(value) || value < 0 || value > max)) {
    throw new InvalidRequestError(`packet ${what} must be an integer from 0 to ${max}, got ${value}`);
  }
}

function side(ip: IpAddress, text: string, endpoint: EndpointDescription | undefined, port: number | undefined, what: string): Side {
  if (endpoint !== undefined && !endpoint.ips.some((e) => {
    const own = tryParseIp(e);
    return own !== undefined && own.family === ip.family && own.value === ip.value;
  })) {
    throw new InvalidRequestError(`packet ${what} address ${text} is not an address of the ${what} endpoint (${endpoint.ips.join(', ') || 'none'})`);
  }
  return { ip, endpoint, port };
}

function context(packet: Packet, src: EndpointDescription | undefined, dst: EndpointDescription | undefined): Context {
  const srcIp = address(packet.srcIp, 'source');
  const dstIp = address(packet.dstIp, 'destination');
  if (srcIp.family !== dstIp.family) throw new InvalidRequestError(`packet source ${packet.srcIp} and destination ${packet.dstIp} are of different IP families`);
  const protocol = protocolNumber(packet.protocol);
  if (!Number.isInteger(protocol) || protocol < 1 || protocol > 255) throw new InvalidRequestError(`packet protocol must be a name or a number from 1 to 255, got ${protocol}`);
  if ((protocol === 1 && srcIp.family === 6) || (protocol === 58 && srcIp.family === 4)) {
    throw new InvalidRequestError(`packet protocol ${String(packet.protocol)} does not go with IPv${srcIp.family} addresses: use ICMP for IPv4 and ICMPv6 for IPv6`);
  }
  checkRange(packet.srcPort, 'source port', 65535);
  checkRange(packet.dstPort, 'destination port', 65535);
  checkRange(packet.icmpType, 'ICMP type', 255);
  checkRange(packet.icmpCode, 'ICMP code', 255);
  const echo = ECHO_REQUEST[protocol];
  return {
    protocol,
    icmpType: echo === undefined ? undefined : (packet.icmpType ?? echo),
    icmpCode: echo === undefined ? undefined : (packet.icmpCode ?? 0),
    src: side(srcIp, packet.srcIp, src, packet.srcPort, 'source'),
    dst: side(dstIp, packet.dstIp, dst, packet.dstPort, 'destination'),
    selectors: new Map(),
    cidrs: new Map(),
  };
}

// ---------------------------------------------------------------------------------------------
// Matching

function cidrsOfFamily(ctx: Context, nets: readonly string[], ip: IpAddress): Cidr[] {
  const out: Cidr[] = [];
  for (const text of nets) {
    let cidr = ctx.cidrs.get(text);
    if (cidr === undefined) {
      cidr = parseCidr(text);
      ctx.cidrs.set(text, cidr);
    }
    if (cidr.family === ip.family) out.push(cidr);
  }
  return out;
}

function selectorMatches(ctx: Context, text: string, s: Side): boolean {
  let sel = ctx.selectors.get(text);
  if (sel === undefined) {
    sel = parseSelector(text);
    ctx.selectors.set(text, sel);
  }
  return s.endpoint !== undefined && sel.matches(s.endpoint.labels);
}

function inRanges(port: number | undefined, ranges: readonly PortRange[]): boolean {
  return port !== undefined && ranges.some((r) => port >= r.from && port <= r.to);
}

function entityMatches(ctx: Context, e: EntityRule, s: Side): boolean {
  if (e.nets !== undefined && e.nets.length > 0) {
    const nets = cidrsOfFamily(ctx, e.nets, s.ip);
    if (nets.length === 0 || !nets.some((c) => containsIp(c, s.ip))) return false;
  }
  if (e.notNets !== undefined && e.notNets.length > 0) {
    const nets = cidrsOfFamily(ctx, e.notNets, s.ip);
    if (nets.length === 0 || nets.some((c) => containsIp(c, s.ip))) return false;
  }
  if (e.selector !== undefined && !selectorMatches(ctx, e.selector, s)) return false;
  if (e.notSelector !== undefined && selectorMatches(ctx, e.notSelector, s)) return false;
  if (e.ports !== undefined && e.ports.length > 0 && !inRanges(s.port, e.ports)) return false;
  if (e.notPorts !== undefined && e.notPorts.length > 0 && inRanges(s.port, e.notPorts)) return false;
  return true;
}

function icmpMatches(ctx: Context, m: IcmpMatch): boolean {
  return ctx.icmpType === m.type && (m.code === undefined || ctx.icmpCode === m.code);
}

function ruleMatches(ctx: Context, rule: Rule): boolean {
  if (rule.protocol !== undefined && protocolNumber(rule.protocol) !== ctx.protocol) return false;
  if (rule.icmp !== undefined && !icmpMatches(ctx, rule.icmp)) return false;
  if (rule.notICMP !== undefined && icmpMatches(ctx, rule.notICMP)) return false;
  return entityMatches(ctx, rule.source, ctx.src) && entityMatches(ctx, rule.destination, ctx.dst);
}

// ---------------------------------------------------------------------------------------------
// Verdicts

function where(ref: RuleRef): string {
  return `profile '${ref.profile}', spec.${ref.direction}[${ref.index}]`;
}

function decide(ctx: Context, direction: Direction, endpoint: EndpointDescription, lookup: ProfileLookup): Decision {
  if (endpoint.profiles.length === 0) {
    return { verdict: 'no-match', allowed: false, logged: [], reason: `dropped: the endpoint has no profiles` };
  }
  const logged: RuleRef[] = [];
  const names: string[] = [];
  for (const name of endpoint.profiles) {
    const profile = lookup(name);
    names.push(profile === undefined ? `${name} (does not exist)` : name);
    const rules = profile === undefined ? [] : direction === 'ingress' ? profile.ingress : profile.egress;
    for (const [index, rule] of rules.entries()) {
      if (!ruleMatches(ctx, rule)) continue;
      const ref: RuleRef = { profile: name, direction, index, action: rule.action };
      if (rule.action === 'log') {
        logged.push(ref);
        continue;
      }
      const allowed = rule.action === 'allow';
      return { verdict: allowed ? 'allowed' : 'denied', allowed, rule: ref, logged, reason: `${allowed ? 'allowed' : 'denied'} by ${where(ref)}` };
    }
  }
  return { verdict: 'no-match', allowed: false, logged, reason: `dropped: no rule matched in profiles [${names.join(', ')}]` };
}

const NOT_CHECKED: Decision = { verdict: 'not-checked', allowed: true, logged: [], reason: 'not a workload endpoint: not checked' };
const NOT_REACHED: Decision = { verdict: 'not-reached', allowed: false, logged: [], reason: 'not reached: the packet was dropped on egress' };

/** Whether `packet` goes from `src` to `dst`, and which rules decide. Either endpoint may be
 * undefined: a non-endpoint address (the host, an outside address). An endpoint's `ips` must
 * include the packet's address on its side. Throws InvalidRequestError for an impossible packet. */
export function explainPacket(
  packet: Packet,
  src: EndpointDescription | undefined,
  dst: EndpointDescription | undefined,
  lookup: ProfileLookup,
): Explanation {
  const ctx = context(packet, src, dst);
  const egress = src === undefined ? NOT_CHECKED : decide(ctx, 'egress', src, lookup);
  if (!egress.allowed) return { allowed: false, egress, ingress: NOT_REACHED };
  const ingress = dst === undefined ? NOT_CHECKED : decide(ctx, 'ingress', dst, lookup);
  return { allowed: ingress.allowed, egress, ingress };
}
