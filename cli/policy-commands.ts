// calicoctl apply / get / delete for profiles, and `policy explain`, which answers whether one
// endpoint may reach another and which rule decides, from the same semantics the agent renders.
import { readFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import { addressPart } from '../ipam/cidr';
import { modifyKey } from '../datastore/cas';
import { InvalidRequestError, NotFoundError } from '../lib/errors';
import { decodeProfile, encodeProfile } from '../model/profile';
import { effectiveLabels, explainPacket, type Decision, type EndpointDescription, type Explanation, type Packet } from '../policy/evaluate';
import { parseProfileDocuments, profileToResource } from '../policy/profile-resource';
import type { Profile, Protocol } from '../policy/types';
import { exactArgs, intFlag, type Context, type Handler } from './context';
import { listEndpoints } from './ipam-commands';
import { render } from './output';
import { stringify } from 'yaml';

async function allProfiles(ctx: Context): Promise<Profile[]> {
  const { items } = await ctx.store.list(ctx.keys.profilesPrefix());
  return items.map((kv) => decodeProfile(kv));
}

/** Create or replace, with compare-and-swap so a concurrent edit is not silently lost. */
async function putProfile(ctx: Context, profile: Profile): Promise<'created' | 'configured' | 'unchanged'> {
  const value = encodeProfile(profile);
  const outcome = await modifyKey(ctx.store, ctx.keys.profile(profile.name), `apply profile ${profile.name}`, () => value);
  return outcome === 'updated' ? 'configured' : outcome;
}

function showProfiles(ctx: Context, profiles: Profile[], single: boolean): void {
  const resources = profiles.map(profileToResource);
  if (ctx.format === 'table') {
    ctx.io.out(render('table', [
      { header: 'NAME', value: (p: Profile) => p.name },
      { header: 'INGRESS RULES', value: (p) => String(p.ingress.length) },
      { header: 'EGRESS RULES', value: (p) => String(p.egress.length) },
      { header: 'LABELS TO APPLY', value: (p) => Object.entries(p.labelsToApply).map(([k, v]) => (v === '' ? k : `${k}=${v}`)).join(',') },
    ], profiles));
    return;
  }
  // The output of `get -o yaml|json` is valid input for `apply -f`.
  const doc = single ? resources[0] : { apiVersion: 'projectcalico.org/v3', kind: 'ProfileList', items: resources };
  ctx.io.out(ctx.format === 'json' ? JSON.stringify(doc, null, 2) : stringify(doc).trimEnd());
}

const PROTOCOLS: readonly string[] = ['tcp', 'udp', 'icmp', 'icmpv6', 'sctp'];

function packetProtocol(value: string | undefined): Protocol {
  const p = (value ?? 'tcp').toLowerCase();
  if (PROTOCOLS.includes(p)) return p as Protocol;
  const n = intFlag(p, '--protocol', 1, 255);
  if (n === undefined) throw new InvalidRequestError(`--protocol must be one of ${PROTOCOLS.join(', ')} or a number`);
  return n;
}

interface Party {
  readonly label: string;
  readonly ip: string;
  readonly endpoint?: EndpointDescription;
  /** False for a workload whose labels are not known yet: the dataplane drops all its traffic. */
  readonly ready: boolean;
}

/** An endpoint by ID (or unique ID prefix) or by address; any other address is a non-workload
 * (the host, something outside), whose own side is not checked. */
async function resolveParty(ctx: Context, arg: string, profiles: Map<string, Profile>, family?: 4 | 6): Promise<Party> {
  const eps = await listEndpoints(ctx);
  const byIp = isIP(arg) !== 0;
  const matches = eps.filter((e) => (byIp ? [...e.ipv4, ...e.ipv6].some((a) => addressPart(a) === arg) : e.id.startsWith(arg)));
  if (matches.length > 1) throw new InvalidRequestError(`'${arg}' matches ${matches.length} endpoints; give more of the endpoint ID`);
  const ep = matches[0];
  if (ep === undefined) {
    if (byIp) return { label: `${arg} (not a workload)`, ip: arg, ready: true };
    throw new NotFoundError(`no endpoint with ID or address '${arg}' (see calicoctl endpoint list)`);
  }
  const addresses = [...ep.ipv4, ...ep.ipv6].map(addressPart);
  const ip = byIp ? arg : addresses.find((a) => family === undefined || isIP(a) === family) ?? addresses[0];
  if (ip === undefined) throw new InvalidRequestError(`endpoint ${ep.id.slice(0, 12)} has no address`);
  return {
    label: `${ep.id.slice(0, 12)} (${ip})`,
    ip,
    ready: ep.ready,
    endpoint: { ips: addresses, profiles: ep.profiles, labels: effectiveLabels(ep.profiles.map((n) => profiles.get(n)?.labelsToApply ?? {}), ep.labels) },
  };
}

function describe(direction: string, who: string, d: Decision): string {
  const logged = d.logged.length > 0 ? ` (logged by ${d.logged.map((r) => `${r.profile} ${r.direction}[${r.index}]`).join(', ')})` : '';
  return `${direction} of ${who}: ${d.verdict}: ${d.reason}${logged}`;
}

/** A workload that is not ready is isolated whatever its profiles say (fail closed), and so is
 * what the kernel does: say so rather than report the profiles' verdict. */
function withReadiness(result: Explanation, src: Party, dst: Party): Explanation {
  const notReady = (who: Party, direction: 'egress' | 'ingress'): Decision => ({
    verdict: 'denied',
    allowed: false,
    logged: [],
    reason: `${who.label} is not ready (its container labels are not known yet): all its ${direction} traffic is dropped`,
  });
  if (!src.ready) return { allowed: false, egress: notReady(src, 'egress'), ingress: { verdict: 'not-reached', allowed: false, logged: [], reason: 'dropped at egress' } };
  if (!dst.ready && result.egress.allowed) return { allowed: false, egress: result.egress, ingress: notReady(dst, 'ingress') };
  return result;
}

export const policyCommands: Record<string, Handler> = {
  async apply(ctx, args) {
    exactArgs(args, 0, 'apply -f <file.yaml|file.json|->');
    const file = ctx.flags.filename;
    if (file === undefined) throw new InvalidRequestError('usage: calicoctl apply -f <file.yaml|file.json|->');
    const text = file === '-' ? await ctx.io.readStdin() : await readFile(file, 'utf8').catch((err: NodeJS.ErrnoException) => {
      throw new InvalidRequestError(`cannot read ${file}: ${err.code ?? err.message}`);
    });
    // Every document is validated before anything is written: a bad file changes nothing.
    const profiles = parseProfileDocuments(text, file.endsWith('.json') ? 'json' : 'yaml', file === '-' ? 'stdin' : file);
    if (profiles.length === 0) throw new InvalidRequestError(`${file} contains no resources`);
    for (const p of profiles) ctx.io.out(`profile ${p.name} ${await putProfile(ctx, p)}`);
  },

  async 'get profile'(ctx, args) {
    if (args.length > 1) throw new InvalidRequestError('usage: calicoctl get profile [name]');
    const name = args[0];
    if (name === undefined) {
      showProfiles(ctx, await allProfiles(ctx), false);
      return;
    }
    const kv = await ctx.store.get(ctx.keys.profile(name));
    if (kv === undefined) throw new NotFoundError(`profile '${name}' does not exist`);
    showProfiles(ctx, [decodeProfile(kv)], true);
  },

  async 'get profiles'(ctx, args) {
    exactArgs(args, 0, 'get profiles');
    showProfiles(ctx, await allProfiles(ctx), false);
  },

  async 'delete profile'(ctx, args) {
    exactArgs(args, 1, 'delete profile <name>');
    const name = args[0] as string;
    if (!(await ctx.store.delete(ctx.keys.profile(name)))) throw new NotFoundError(`profile '${name}' does not exist`);
    const users = (await listEndpoints(ctx)).filter((e) => e.profiles.includes(name));
    ctx.io.out(`profile ${name} deleted`);
    if (users.length > 0) ctx.io.out(`warning: ${users.length} endpoint(s) still use it and now drop all traffic until it is recreated`);
  },

  async 'policy explain'(ctx, args) {
    exactArgs(args, 2, 'policy explain <endpoint|ip> <endpoint|ip> [--protocol P] [--port N] [--src-port N] [--icmp-type T] [--icmp-code C]');
    const profiles = new Map((await allProfiles(ctx)).map((p) => [p.name, p]));
    const src = await resolveParty(ctx, args[0] as string, profiles);
    const dst = await resolveParty(ctx, args[1] as string, profiles, isIP(src.ip) === 6 ? 6 : 4);
    const protocol = packetProtocol(ctx.flags.protocol);
    const dstPort = intFlag(ctx.flags.port, '--port', 0, 65535);
    const srcPort = intFlag(ctx.flags.srcPort, '--src-port', 0, 65535);
    const icmpType = intFlag(ctx.flags.icmpType, '--icmp-type', 0, 255);
    const icmpCode = intFlag(ctx.flags.icmpCode, '--icmp-code', 0, 255);
    const packet: Packet = {
      protocol,
      srcIp: src.ip,
      dstIp: dst.ip,
      ...(dstPort !== undefined && { dstPort }),
      ...(srcPort !== undefined && { srcPort }),
      ...(icmpType !== undefined && { icmpType }),
      ...(icmpCode !== undefined && { icmpCode }),
    };
    const result = withReadiness(explainPacket(packet, src.endpoint, dst.endpoint, (n) => profiles.get(n)), src, dst);
    // Mirrors the dataplane: a host's own traffic to its local workloads is not filtered.
    const note = src.endpoint === undefined && dst.endpoint !== undefined
      ? `${src.ip} is not a workload: this verdict holds for traffic from other hosts or outside; traffic that originates on the destination's own host is always allowed to its local workloads`
      : undefined;
    const summary = {
      allowed: result.allowed,
      packet,
      egress: { of: src.label, ...result.egress },
      ingress: { of: dst.label, ...result.ingress },
      ...(note !== undefined && { note }),
    };
    if (ctx.format !== 'table') {
      ctx.io.out(ctx.format === 'json' ? JSON.stringify(summary, null, 2) : stringify(summary).trimEnd());
      return;
    }
    const port = dstPort === undefined ? '' : ` port ${dstPort}`;
    ctx.io.out([
      `${src.label} -> ${dst.label} ${String(protocol)}${port}: ${result.allowed ? 'ALLOWED' : 'DENIED'}`,
      `  ${describe('egress', src.label, result.egress)}`,
      `  ${describe('ingress', dst.label, result.ingress)}`,
      ...(note !== undefined ? [`  note: ${note}`] : []),
    ].join('\n'));
  },
};
