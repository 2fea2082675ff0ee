// Profile policy against the real kernel, inside throwaway namespaces: a "host" namespace H with
// containers attached by real veths (plumbed as dataplane.test.ts does), real iptables-nft and
// ipset, connectivity checked with busybox nc (TCP) and ping (ICMP). Every connectivity check is
// also put to policy/evaluate.ts (what `calicoctl policy explain` says), which must agree.
//
// Each test uses its own chain/set prefix, so the tests stay independent even on kernels where
// ipsets are not per network namespace (on this project's CI kernel they are).

import test, { type ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { DataplaneError } from '../../lib/errors.js';
import { hostVethName, tempPeerName } from '../../dataplane/names.js';
import { PolicyDataplane } from '../../dataplane/policy-dataplane.js';
import { createEndpointVeth } from '../../dataplane/veth.js';
import { effectiveLabels, explainPacket } from '../../policy/evaluate.js';
import { DISPATCH_FLAT_MAX, renderPolicy, type PolicyModel } from '../../policy/render.js';
import type { Labels, Profile, Rule } from '../../policy/types.js';
import { acceptedPeer } from '../harness/multihost-probes.js';
import { execInNetns, ipIn, netnsRegistry, type NetnsRegistry, HOST_V4, HOST_V6, makeRoutedHost, plumbContainer } from '../harness/netns.js';

const BUSYBOX = '/bin/busybox';
const MTU = 1400;
const H_V4 = HOST_V4;
const H_V6 = HOST_V6;
const MARK = 0x100000;

test.before(() => {
  if (!existsSync(BUSYBOX)) throw new Error(`${BUSYBOX} missing: install busybox-static`);
});

// ---------------------------------------------------------------------------------------------
// World: a host namespace, containers, a PolicyDataplane

interface Container {
  ns: string;
  id: string;
  hostIf: string;
  v4: string;
  v6?: string;
  profiles: string[];
  labels: Labels;
  ready: boolean;
}

interface World {
  h: string;
  reg: NetnsRegistry;
  prefix: string;
  dp: PolicyDataplane;
  cs: Container[];
  profiles: Map<string, Profile>;
}


async function world(t: ExecutionContext, restoreSessions = true): Promise<World> {
  const reg = netnsRegistry(t);
  const h = await makeRoutedHost(reg, 'cph');
  const prefix = `t${randomBytes(3).toString('hex')}`;
  const dp = new PolicyDataplane({ prefix, markBit: MARK, netns: h, restoreSessions });
  // Registered after the namespaces, so it runs before they are deleted (teardowns run LIFO).
  t.teardown(async () => {
    await dp.removeAll();
  });
  return { h, reg, prefix, dp, cs: [], profiles: new Map() };
}

async function attach(
  w: World,
  spec: { v4: string; v6?: string; profiles: string[]; labels?: Labels; ready?: boolean },
): Promise<Container> {
  const id = randomBytes(32).toString('hex');
  const hostIf = hostVethName('cali', id);
  const peerIf = tempPeerName(id);
  const res = await createEndpointVeth(
    { hostIf, peerIf, mtu: MTU, ipv4: [`${spec.v4}/32`], ...(spec.v6 ? { ipv6: [spec.v6] } : {}) },
    { netns: w.h },
  );
  const ns = await plumbContainer(w.reg, w.h, peerIf, { v4: spec.v4, ...(spec.v6 !== undefined && { v6: spec.v6 }), ...(res.gatewayIPv6 !== undefined && { gatewayIPv6: res.gatewayIPv6 }) }, 'cpc');
  const c: Container = {
    ns,
    id,
    hostIf,
    v4: spec.v4,
    ...(spec.v6 ? { v6: spec.v6 } : {}),
    profiles: spec.profiles,
    labels: spec.labels ?? {},
    ready: spec.ready ?? true,
  };
  w.cs.push(c);
  return c;
}

function effective(w: World, c: Container): Labels {
  return effectiveLabels(c.profiles.map((p) => w.profiles.get(p)?.labelsToApply ?? {}), c.labels);
}

function modelOf(w: World): PolicyModel {
  return {
    localEndpoints: w.cs.map((c) => ({
      id: c.id,
      hostIf: c.hostIf,
      ipv4: [c.v4],
      ipv6: c.v6 ? [c.v6] : [],
      profiles: c.profiles,
      ready: c.ready,
    })),
    remoteAndLocalEndpoints: w.cs.map((c) => ({ ipv4: [c.v4], ipv6: c.v6 ? [c.v6] : [], labels: effective(w, c) })),
    profiles: w.profiles,
    natOutgoingPools: [],
    allPools: ['10.66.0.0/16', 'fd66::/64'],
  };
}

function setProfiles(w: World, ...ps: Profile[]): void {
  for (const p of ps) w.profiles.set(p.name, p);
}

function profile(name: string, ingress: Rule[], egress: Rule[] = [{ action: 'allow', source: {}, destination: {} }]): Profile {
  return { name, labels: {}, annotations: {}, ingress, egress, labelsToApply: { [name]: '' } };
}

/** Calico's default for a network: ingress from the same profile, all egress. */
function networkProfile(name: string): Profile {
  return profile(name, [{ action: 'allow', source: { selector: `has(${name})` }, destination: {} }]);
}

// ---------------------------------------------------------------------------------------------
// Connectivity

const TCP_TIMEOUT_S = '2';

/** One TCP connection from `from` to ip:port; true if the listener received our token. */
async function tcpOnce(from: string, toNs: string, ip: string, port: number): Promise<boolean> {
  const token = `tok-${randomBytes(4).toString('hex')}`;
  const listener = spawn('ip', ['netns', 'exec', toNs, BUSYBOX, 'nc', '-l', '-p', String(port)], { stdio: ['ignore', 'pipe', 'ignore'] });
  let received = '';
  listener.stdout.on('data', (d: Buffer) => (received += d.toString()));
  const exited = new Promise<void>((resolve) => listener.on('close', () => resolve()));
  try {
    // Wait until it listens (no timing assumption: poll the socket table).
    for (let i = 0; ; i++) {
      const { stdout } = await execInNetns(toNs, 'ss', ['-ltnH', `sport = :${port}`]);
      if (stdout.trim() !== '') break;
      if (i > 200) throw new Error(`listener on ${ip}:${port} never came up`);
      await sleep(10);
    }
    try {
      await execInNetns(from, BUSYBOX, ['nc', '-w', TCP_TIMEOUT_S, ip, String(port)], { input: `${token}\n`, timeoutMs: 15_000 });
    } catch {
      return false;
    }
    await Promise.race([exited, sleep(3000)]);
    return received.includes(token);
  } finally {
    if (listener.exitCode === null && listener.pid !== undefined) listener.kill('SIGKILL');
    await exited;
  }
}

/** An expected success gets a few tries (a first packet can race neighbour resolution); an
 * expected failure one (a dropped connection cannot succeed by chance). */
async function tcp(from: string, toNs: string, ip: string, port: number, expected: boolean): Promise<boolean> {
  for (let i = 0; i < (expected ? 3 : 1); i++) if (await tcpOnce(from, toNs, ip, port)) return true;
  return false;
}

async function ping(from: string, target: string, expected: boolean): Promise<boolean> {
  const applet = target.includes(':') ? 'ping6' : 'ping';
  for (let i = 0; i < (expected ? 3 : 1); i++) {
    try {
      await execInNetns(from, BUSYBOX, [applet, '-c', '1', '-W', '2', target], { timeoutMs: 10_000 });
      return true;
    } catch {
      // try again
    }
  }
  return false;
}

/** Kernel and policy/evaluate.ts must both say `expected`. */
async function check(
  t: ExecutionContext,
  w: World,
  from: Container,
  to: Container,
  what: { tcp: number } | { icmp: true },
  expected: boolean,
  family: 4 | 6 = 4,
): Promise<void> {
  const dstIp = family === 4 ? to.v4 : (to.v6 ?? '');
  const srcIp = family === 4 ? from.v4 : (from.v6 ?? '');
  const label = `${from.hostIf} -> ${to.hostIf} ${'tcp' in what ? `tcp ${what.tcp}` : 'icmp'} IPv${family}`;
  const kernel = 'tcp' in what ? await tcp(from.ns, to.ns, dstIp, what.tcp, expected) : await ping(from.ns, dstIp, expected);
  t.is(kernel, expected, `kernel: ${label}`);
  if (!from.ready || !to.ready) return; // readiness is the dataplane's business, not the rules'
  const desc = (c: Container) => ({ ips: [c.v4, ...(c.v6 ? [c.v6] : [])], labels: effective(w, c), profiles: c.profiles });
  const packet = 'tcp' in what
    ? { protocol: 'tcp' as const, srcIp, dstIp, dstPort: what.tcp }
    : { protocol: family === 4 ? ('icmp' as const) : ('icmpv6' as const), srcIp, dstIp };
  const explained = explainPacket(packet, desc(from), desc(to), (n) => w.profiles.get(n));
  t.is(explained.allowed, expected, `policy explain: ${label}: ${explained.egress.reason}; ${explained.ingress.reason}`);
}

/** Our lines of iptables-save (both tables), without the volatile header comments. */
async function ourRules(w: World, family: 4 | 6 = 4): Promise<string[]> {
  const { stdout } = await execInNetns(w.h, family === 4 ? 'iptables-save' : 'ip6tables-save', []);
  return stdout.split('\n').filter((l) => !l.startsWith('#') && l.includes(`${w.prefix}-`));
}

async function ourSets(w: World): Promise<string[]> {
  const { stdout } = await execInNetns(w.h, 'ipset', ['list', '-n']);
  return stdout.split('\n').filter((n) => n.startsWith(`${w.prefix}-`)).sort();
}

// ---------------------------------------------------------------------------------------------

test('default profiles: same profile talks, two profiles are isolated; host and workloads', async (t) => {
  const w = await world(t);
  setProfiles(w, networkProfile('net-a'), networkProfile('net-b'));
  const a1 = await attach(w, { v4: '10.66.0.1', profiles: ['net-a'] });
  const a2 = await attach(w, { v4: '10.66.0.2', profiles: ['net-a'] });
  const b1 = await attach(w, { v4: '10.66.0.3', profiles: ['net-b'] });
  const stats = await w.dp.apply(modelOf(w));
  t.true(stats.fullResync);

  await check(t, w, a1, a2, { tcp: 8080 }, true);
  await check(t, w, a2, a1, { icmp: true }, true);
  await check(t, w, b1, a1, { tcp: 8080 }, false);
  await check(t, w, a1, b1, { icmp: true }, false);
  // Workload → host passes the workload's egress (allow all); host → workload is not filtered.
  t.true(await ping(b1.ns, H_V4, true), 'workload reaches the host');
  t.true(await ping(w.h, a1.v4, true), 'host reaches the workload');
});

test('allow TCP 8080 from a selector only: other port and unlabelled peer blocked', async (t) => {
  const w = await world(t);
  setProfiles(
    w,
    networkProfile('front'),
    profile('web', [{ action: 'allow', protocol: 'tcp', source: { selector: "role == 'frontend'" }, destination: { ports: [{ from: 8080, to: 8080 }] } }]),
  );
  const fe = await attach(w, { v4: '10.66.0.1', profiles: ['front'], labels: { role: 'frontend' } });
  const other = await attach(w, { v4: '10.66.0.2', profiles: ['front'] });
  const web = await attach(w, { v4: '10.66.0.3', profiles: ['web'] });
  await w.dp.apply(modelOf(w));

  await check(t, w, fe, web, { tcp: 8080 }, true);
  await check(t, w, fe, web, { tcp: 9090 }, false);
  await check(t, w, other, web, { tcp: 8080 }, false);
  await check(t, w, fe, web, { icmp: true }, false);

  // Relabel: the unlabelled peer becomes a frontend, only a set changes.
  other.labels = { role: 'frontend' };
  const stats = await w.dp.apply(modelOf(w));
  t.is(stats.chainsWritten, 0);
  t.is(stats.setsWritten, 1);
  await check(t, w, other, web, { tcp: 8080 }, true);
});

test('deny before allow (and a log rule that changes nothing)', async (t) => {
  const w = await world(t);
  setProfiles(
    w,
    profile('clients', []),
    profile('svc', [
      { action: 'log', protocol: 'tcp', source: {}, destination: {} },
      { action: 'deny', protocol: 'tcp', source: { selector: "role == 'bad'" }, destination: {} },
      { action: 'allow', source: {}, destination: {} },
    ]),
  );
  const good = await attach(w, { v4: '10.66.0.1', profiles: ['clients'], labels: { role: 'good' } });
  const bad = await attach(w, { v4: '10.66.0.2', profiles: ['clients'], labels: { role: 'bad' } });
  const svc = await attach(w, { v4: '10.66.0.3', profiles: ['svc'] });
  await w.dp.apply(modelOf(w));

  await check(t, w, good, svc, { tcp: 8080 }, true);
  await check(t, w, bad, svc, { tcp: 8080 }, false);
  await check(t, w, bad, svc, { icmp: true }, true); // the deny is TCP only
});

test('several profiles: the first that allows wins; one without a verdict passes to the next', async (t) => {
  const w = await world(t);
  setProfiles(
    w,
    profile('clients', []),
    // Allows TCP 8080 only; no verdict for anything else.
    profile('web', [{ action: 'allow', protocol: 'tcp', source: {}, destination: { ports: [{ from: 8080, to: 8080 }] } }]),
    // Denies all TCP, allows the rest.
    profile('strict', [
      { action: 'deny', protocol: 'tcp', source: {}, destination: {} },
      { action: 'allow', source: {}, destination: {} },
    ]),
  );
  const c = await attach(w, { v4: '10.66.0.1', profiles: ['clients'] });
  const webFirst = await attach(w, { v4: '10.66.0.2', profiles: ['web', 'strict'] });
  const strictFirst = await attach(w, { v4: '10.66.0.3', profiles: ['strict', 'web'] });
  await w.dp.apply(modelOf(w));

  await check(t, w, c, webFirst, { tcp: 8080 }, true); // web allows: strict's deny is never reached
  await check(t, w, c, webFirst, { tcp: 9090 }, false); // web has no verdict: strict denies
  await check(t, w, c, webFirst, { icmp: true }, true); // web has no verdict: strict allows
  await check(t, w, c, strictFirst, { tcp: 8080 }, false); // strict denies first
  await check(t, w, c, strictFirst, { icmp: true }, true);
});

test('notPorts, and egress rules checked at the sender', async (t) => {
  const w = await world(t);
  setProfiles(
    w,
    profile('client', [], [
      { action: 'deny', protocol: 'tcp', source: {}, destination: { ports: [{ from: 7000, to: 7999 }] } },
      { action: 'allow', source: {}, destination: {} },
    ]),
    profile('svc', [{ action: 'allow', protocol: 'tcp', source: {}, destination: { notPorts: [{ from: 9090, to: 9090 }] } }]),
  );
  const c = await attach(w, { v4: '10.66.0.1', profiles: ['client'] });
  const s = await attach(w, { v4: '10.66.0.2', profiles: ['svc'] });
  await w.dp.apply(modelOf(w));

  await check(t, w, c, s, { tcp: 8080 }, true);
  await check(t, w, c, s, { tcp: 9090 }, false); // svc ingress: notPorts
  await check(t, w, c, s, { tcp: 7070 }, false); // client egress: denied range
});

test('nets and notNets', async (t) => {
  const w = await world(t);
  setProfiles(
    w,
    profile('clients', []),
    profile('svc', [{ action: 'allow', source: { nets: ['10.66.0.0/24', 'fd00::/8'], notNets: ['10.66.0.2/32'] }, destination: {} }]),
  );
  const c1 = await attach(w, { v4: '10.66.0.1', profiles: ['clients'] });
  const c2 = await attach(w, { v4: '10.66.0.2', profiles: ['clients'] });
  const c3 = await attach(w, { v4: '10.66.1.3', profiles: ['clients'] });
  const s = await attach(w, { v4: '10.66.0.9', profiles: ['svc'] });
  await w.dp.apply(modelOf(w));

  await check(t, w, c1, s, { tcp: 8080 }, true);
  await check(t, w, c2, s, { tcp: 8080 }, false); // in notNets
  await check(t, w, c3, s, { tcp: 8080 }, false); // outside nets
});

test('notSelector', async (t) => {
  const w = await world(t);
  setProfiles(w, profile('clients', []), profile('svc', [{ action: 'allow', source: { notSelector: "role == 'bad'" }, destination: {} }]));
  const good = await attach(w, { v4: '10.66.0.1', profiles: ['clients'] });
  const bad = await attach(w, { v4: '10.66.0.2', profiles: ['clients'], labels: { role: 'bad' } });
  const s = await attach(w, { v4: '10.66.0.3', profiles: ['svc'] });
  await w.dp.apply(modelOf(w));

  await check(t, w, good, s, { tcp: 8080 }, true);
  await check(t, w, bad, s, { tcp: 8080 }, false);
  await check(t, w, bad, s, { icmp: true }, false);
});

test('ICMP allow only: ping passes, TCP does not', async (t) => {
  const w = await world(t);
  setProfiles(w, profile('clients', []), profile('svc', [{ action: 'allow', protocol: 'icmp', icmp: { type: 8 }, source: {}, destination: {} }]));
  const c = await attach(w, { v4: '10.66.0.1', profiles: ['clients'] });
  const s = await attach(w, { v4: '10.66.0.2', profiles: ['svc'] });
  await w.dp.apply(modelOf(w));

  await check(t, w, c, s, { icmp: true }, true);
  await check(t, w, c, s, { tcp: 8080 }, false);
  await check(t, w, s, c, { icmp: true }, false); // clients accept nothing
});

test('IPv6: same profile talks (TCP and ping6), another profile is isolated, ND keeps working', async (t) => {
  const w = await world(t);
  setProfiles(w, networkProfile('net-a'), networkProfile('net-b'));
  const a1 = await attach(w, { v4: '10.66.0.1', v6: 'fd66::1', profiles: ['net-a'] });
  const a2 = await attach(w, { v4: '10.66.0.2', v6: 'fd66::2', profiles: ['net-a'] });
  const b1 = await attach(w, { v4: '10.66.0.3', v6: 'fd66::3', profiles: ['net-b'] });
  await w.dp.apply(modelOf(w));

  await check(t, w, a1, a2, { icmp: true }, true, 6);
  await check(t, w, a2, a1, { tcp: 8080 }, true, 6);
  await check(t, w, b1, a1, { tcp: 8080 }, false, 6);
  await check(t, w, a1, b1, { icmp: true }, false, 6);
  t.true(await ping(a1.ns, H_V6, true), 'workload reaches the host over IPv6');
});

test('an endpoint that is not ready is isolated until it is', async (t) => {
  const w = await world(t);
  setProfiles(w, networkProfile('net-a'));
  const a1 = await attach(w, { v4: '10.66.0.1', profiles: ['net-a'] });
  const a2 = await attach(w, { v4: '10.66.0.2', profiles: ['net-a'], ready: false });
  await w.dp.apply(modelOf(w));

  await check(t, w, a1, a2, { tcp: 8080 }, false);
  await check(t, w, a2, a1, { tcp: 8080 }, false);
  t.false(await ping(a2.ns, H_V4, false), 'not even the host');

  a2.ready = true;
  await w.dp.apply(modelOf(w));
  await check(t, w, a1, a2, { tcp: 8080 }, true);
  await check(t, w, a2, a1, { icmp: true }, true);
});

test('an interface the policy does not know yet gets nothing (fail closed)', async (t) => {
  const w = await world(t);
  setProfiles(w, networkProfile('net-a'));
  const a1 = await attach(w, { v4: '10.66.0.1', profiles: ['net-a'] });
  await w.dp.apply(modelOf(w));
  const late = await attach(w, { v4: '10.66.0.2', profiles: ['net-a'] });
  w.cs.pop(); // the agent has not heard of it yet
  t.false(await tcp(a1.ns, late.ns, late.v4, 8080, false));
  t.false(await ping(late.ns, a1.v4, false));
  w.cs.push(late);
  await w.dp.apply(modelOf(w));
  t.true(await tcp(a1.ns, late.ns, late.v4, 8080, true));
});

test('many endpoints: the dispatch tree sends each interface to its own chains', async (t) => {
  const w = await world(t);
  setProfiles(w, networkProfile('net-a'), networkProfile('net-b'));
  const a1 = await attach(w, { v4: '10.66.0.1', profiles: ['net-a'] });
  const a2 = await attach(w, { v4: '10.66.0.2', profiles: ['net-a'] });
  const b1 = await attach(w, { v4: '10.66.0.3', profiles: ['net-b'] });
  // Host ends without containers behind them: enough endpoints for a dispatch tree.
  for (let i = 0; i < DISPATCH_FLAT_MAX; i++) {
    const id = randomBytes(32).toString('hex');
    const hostIf = hostVethName('cali', id);
    await createEndpointVeth({ hostIf, peerIf: tempPeerName(id), mtu: MTU, ipv4: [`10.66.1.${i + 1}`] }, { netns: w.h });
    w.cs.push({ ns: '', id, hostIf, v4: `10.66.1.${i + 1}`, profiles: [i % 2 ? 'net-a' : 'net-b'], labels: {}, ready: true });
  }
  await w.dp.apply(modelOf(w));
  t.true((await ourRules(w, 4)).some((l) => l.startsWith(`-A ${w.prefix}-from-wl-dispatch -i cali`) && l.includes(' -g ')));

  await check(t, w, a1, a2, { tcp: 8080 }, true);
  await check(t, w, b1, a2, { tcp: 8080 }, false);
  await check(t, w, a2, b1, { icmp: true }, false);
});

test('shared endpoint chains: per-interface dispatch keeps anti-spoofing; chains go with their last user', async (t) => {
  const w = await world(t);
  setProfiles(w, networkProfile('net-a'), networkProfile('net-b'));
  const a1 = await attach(w, { v4: '10.66.0.1', profiles: ['net-a'] });
  const a2 = await attach(w, { v4: '10.66.0.2', profiles: ['net-a'] });
  const b1 = await attach(w, { v4: '10.66.0.3', profiles: ['net-b'] });
  const none = await attach(w, { v4: '10.66.0.4', profiles: [] });
  await w.dp.apply(modelOf(w));
  const chains = async (): Promise<string[]> => (await ourRules(w, 4)).filter((l) => l.startsWith(':')).map((l) => l.slice(1).split(' ')[0] ?? '');
  const endpointChains = (await chains()).filter((c) => /^t[0-9a-f]+-[ft]w-/.test(c)).sort();
  t.deepEqual(endpointChains, ['fw-_none', 'fw-net-a', 'fw-net-b', 'tw-_none', 'tw-net-a', 'tw-net-b'].map((c) => `${w.prefix}-${c}`));
  // Nothing but the dispatch rules names an interface.
  for (const l of await ourRules(w, 4)) {
    if (w.cs.some((c) => l.includes(c.hostIf))) t.regex(l, new RegExp(`^-A ${w.prefix}-(from|to)-wl-dispatch `), l);
  }

  await check(t, w, a1, a2, { tcp: 8080 }, true);
  await check(t, w, a2, a1, { icmp: true }, true);
  await check(t, w, b1, a1, { tcp: 8080 }, false);
  // No profile: nothing in, nothing out, not even to the host.
  await check(t, w, none, a1, { icmp: true }, false);
  await check(t, w, a1, none, { icmp: true }, false);
  t.false(await ping(none.ns, H_V4, false), 'no profile: not even the host');

  // Anti-spoofing stays with the interface: b1 sends from 10.66.0.99, an address of a net-a
  // endpoint on another host (so a1's ingress would allow it), routed back to b1 by the host.
  const spoofed = '10.66.0.99';
  await ipIn(b1.ns, ['addr', 'add', `${spoofed}/32`, 'dev', 'eth0']);
  await ipIn(w.h, ['route', 'add', `${spoofed}/32`, 'dev', b1.hostIf, 'scope', 'link']);
  const remoteA = { ipv4: [spoofed], ipv6: [], labels: { 'net-a': '' } };
  const withRemote = (m: PolicyModel, b1Addresses: string[]): PolicyModel => ({
    ...m,
    localEndpoints: m.localEndpoints.map((e) => (e.hostIf === b1.hostIf ? { ...e, ipv4: b1Addresses } : e)),
    remoteAndLocalEndpoints: [...m.remoteAndLocalEndpoints, remoteA],
  });
  const pingFrom = async (expected: boolean): Promise<boolean> => {
    for (let i = 0; i < (expected ? 3 : 1); i++) {
      try {
        await execInNetns(b1.ns, BUSYBOX, ['ping', '-c', '1', '-W', '2', '-I', spoofed, a1.v4], { timeoutMs: 10_000 });
        return true;
      } catch {
        // try again
      }
    }
    return false;
  };
  await w.dp.apply(withRemote(modelOf(w), [b1.v4]));
  t.false(await pingFrom(false), 'a source address that is not the endpoint\'s own is dropped at dispatch');
  // Control: the same packet passes once the address is b1's own (so only the source check
  // stopped it above).
  await w.dp.apply(withRemote(modelOf(w), [b1.v4, spoofed]));
  t.true(await pingFrom(true), 'the same packet from an address of its own passes');
  await ipIn(w.h, ['route', 'del', `${spoofed}/32`, 'dev', b1.hostIf]);

  // a2 leaves: its dispatch rules go, the shared chains stay for a1, and a2's interface is back
  // to the fail-closed drop.
  w.cs.splice(w.cs.indexOf(a2), 1);
  const left = await w.dp.apply(modelOf(w));
  t.is(left.chainsRemoved, 0);
  t.false((await ourRules(w, 4)).some((l) => l.includes(a2.hostIf) || l.includes(a2.v4)));
  t.true((await chains()).includes(`${w.prefix}-fw-net-a`));
  t.false(await ping(a2.ns, a1.v4, false), 'a departed endpoint\'s interface is dropped');
  t.false(await ping(a2.ns, H_V4, false), 'not even to the host');

  // a1, the last user of [net-a], leaves: its endpoint and profile chains go too. IPv4-only
  // workloads: IPv6 never had any of them.
  for (const fam of [4, 6] as const) t.is((await ourRules(w, fam)).some((l) => l.includes('net-')), fam === 4, `IPv${fam}`);
  w.cs.splice(w.cs.indexOf(a1), 1);
  const last = await w.dp.apply(modelOf(w));
  t.is(last.chainsRemoved, 4); // fw/tw-net-a, pri/pro-net-a
  for (const fam of [4, 6] as const) t.false((await ourRules(w, fam)).some((l) => l.includes('net-a') || l.includes(a1.hostIf)), `IPv${fam}`);
  t.true(await ping(b1.ns, H_V4, true), 'the others keep their policy');
});

test('incremental: same input writes nothing; one profile change writes only its chains', async (t) => {
  const w = await world(t);
  setProfiles(w, networkProfile('net-a'), networkProfile('net-b'));
  const a1 = await attach(w, { v4: '10.66.0.1', v6: 'fd66::1', profiles: ['net-a'] });
  const b1 = await attach(w, { v4: '10.66.0.2', v6: 'fd66::2', profiles: ['net-b'] });
  await w.dp.apply(modelOf(w));
  const again = await w.dp.apply(modelOf(w));
  t.false(again.fullResync);
  t.is(again.processes, 0);
  t.deepEqual([again.chainsWritten, again.chainsRemoved, again.setsWritten, again.setsRemoved, again.jumpsWritten], [0, 0, 0, 0, 0]);

  setProfiles(w, profile('net-b', [{ action: 'allow', protocol: 'tcp', source: { selector: 'has(net-a)' }, destination: { ports: [{ from: 8080, to: 8080 }] } }]));
  const changed = await w.dp.apply(modelOf(w));
  t.is(changed.chainsWritten, 2); // its ingress chain, IPv4 and IPv6
  t.is(changed.setsRemoved, 2); // has(net-b), both families
  await check(t, w, a1, b1, { tcp: 8080 }, true);
  await check(t, w, a1, b1, { tcp: 9090 }, false);
});

test('resync after state loss and a restart: identical rules, no duplicates; tampering healed', async (t) => {
  const w = await world(t);
  setProfiles(w, networkProfile('net-a'));
  const a1 = await attach(w, { v4: '10.66.0.1', v6: 'fd66::1', profiles: ['net-a'] });
  const a2 = await attach(w, { v4: '10.66.0.2', v6: 'fd66::2', profiles: ['net-a'] });
  await w.dp.apply({ ...modelOf(w), natOutgoingPools: ['10.66.0.0/16'] });
  const rules4 = await ourRules(w, 4);
  const rules6 = await ourRules(w, 6);
  const sets = await ourSets(w);

  w.dp.resync();
  const r = await w.dp.apply({ ...modelOf(w), natOutgoingPools: ['10.66.0.0/16'] });
  t.true(r.fullResync);
  t.deepEqual([r.chainsWritten, r.chainsRemoved, r.setsWritten, r.setsRemoved, r.jumpsWritten], [0, 0, 0, 0, 0]);

  // A new process (plugin restart) with the same policy: reads the kernel, writes nothing.
  const restarted = new PolicyDataplane({ prefix: w.prefix, markBit: MARK, netns: w.h });
  t.teardown(() => restarted.close());
  const rs = await restarted.apply({ ...modelOf(w), natOutgoingPools: ['10.66.0.0/16'] });
  t.is(rs.chainsWritten + rs.setsWritten + rs.jumpsWritten, 0);
  t.deepEqual(await ourRules(w, 4), rules4);
  t.deepEqual(await ourRules(w, 6), rules6);
  t.deepEqual(await ourSets(w), sets);

  // Someone duplicates our jump, pushes it down, edits a chain and leaves a stray chain and set.
  await execInNetns(w.h, 'iptables', ['-w', '-I', 'FORWARD', '1', '-j', 'ACCEPT']);
  await execInNetns(w.h, 'iptables', ['-w', '-A', 'FORWARD', '-j', `${w.prefix}-FORWARD`]);
  await execInNetns(w.h, 'iptables', ['-w', '-I', `${w.prefix}-pri-net-a`, '1', '-j', 'ACCEPT']);
  await execInNetns(w.h, 'iptables', ['-w', '-N', `${w.prefix}-stray`]);
  await execInNetns(w.h, 'iptables', ['-w', '-A', 'OUTPUT', '-j', `${w.prefix}-stray`]);
  await execInNetns(w.h, 'ipset', ['create', `${w.prefix}-4s-stray`, 'hash:ip']);
  restarted.resync();
  const healed = await restarted.apply({ ...modelOf(w), natOutgoingPools: ['10.66.0.0/16'] });
  t.is(healed.chainsWritten, 1);
  t.is(healed.chainsRemoved, 1);
  t.is(healed.setsRemoved, 1);
  t.deepEqual(await ourRules(w, 4), rules4);
  t.deepEqual(await ourSets(w), sets);
  const { stdout } = await execInNetns(w.h, 'iptables', ['-w', '-S', 'FORWARD']);
  t.is(stdout.split('\n').filter((l) => l.startsWith('-A FORWARD'))[0], `-A FORWARD -j ${w.prefix}-FORWARD`);
  await check(t, w, a1, a2, { tcp: 8080 }, true);
});

for (const sessions of [true, false]) {
  test(`rules written ${sessions ? 'through long-running restore tools' : 'by a restore process per write'}: the kernel holds the model; a refused line is named`, async (t) => {
    const w = await world(t, sessions);
    setProfiles(w, networkProfile('net-a'));
    await attach(w, { v4: '10.66.0.1', v6: 'fd66::1', profiles: ['net-a'] });
    await w.dp.apply(modelOf(w));
    const a2 = await attach(w, { v4: '10.66.0.2', v6: 'fd66::2', profiles: ['net-a'] });
    const added = await w.dp.apply(modelOf(w));
    // Both families' rules and the set members changed: no process started with the tools running.
    t.is(added.processes, sessions ? 0 : 2);
    t.true((await ourRules(w, 6)).some((r) => r.includes(a2.hostIf)));
    w.dp.resync();
    const check = await w.dp.apply(modelOf(w));
    t.is(check.chainsWritten + check.chainsRemoved + check.jumpsWritten + check.setsWritten, 0);

    // A chain of ours deleted behind the tools' back: the next incremental write inserts into it
    // and is refused; the error names the line, and the following apply (a full resync) heals.
    const dispatch = `${w.prefix}-from-wl-dispatch`;
    for (const c of [`${w.prefix}-FORWARD`, `${w.prefix}-INPUT`, dispatch]) await execInNetns(w.h, 'iptables', ['-w', '-F', c]);
    await execInNetns(w.h, 'iptables', ['-w', '-X', dispatch]);
    await attach(w, { v4: '10.66.0.3', v6: 'fd66::3', profiles: ['net-a'] });
    const err = await t.throwsAsync(w.dp.apply(modelOf(w)));
    t.regex(err?.message ?? '', /write IPv4 policy chains: .*line \d+.*\(input: .+\)/s);
    const healed = await w.dp.apply(modelOf(w));
    t.true(healed.fullResync);
    w.dp.resync();
    const again = await w.dp.apply(modelOf(w));
    t.is(again.chainsWritten + again.chainsRemoved + again.jumpsWritten + again.setsWritten, 0);
  });
}

test('a failed apply forces a full resync; removeAll leaves nothing of ours', async (t) => {
  const w = await world(t);
  setProfiles(w, networkProfile('net-a'));
  await attach(w, { v4: '10.66.0.1', v6: 'fd66::1', profiles: ['net-a'] });
  await w.dp.apply({ ...modelOf(w), natOutgoingPools: ['10.66.0.0/16', 'fd66::/64'] });
  t.true((await ourRules(w, 4)).length > 0);
  t.true((await ourRules(w, 6)).length > 0);
  t.true((await ourSets(w)).length > 0);

  // The set a new rule needs already exists with the wrong type (made behind our back): the
  // apply fails, the applied state is forgotten, and the next apply starts from the kernel.
  setProfiles(w, profile('net-a', [{ action: 'allow', source: { nets: ['10.0.0.0/8'] }, destination: {} }]));
  const model = modelOf(w);
  const netSet = [...renderPolicy({ ...model, prefix: w.prefix, markBit: MARK }).sets.keys()].find((n) => n.startsWith(`${w.prefix}-4n-`));
  if (netSet === undefined) throw new Error('expected a net set');
  await execInNetns(w.h, 'ipset', ['create', netSet, 'hash:ip']);
  await t.throwsAsync(w.dp.apply(model), { instanceOf: DataplaneError });
  t.is(w.dp.appliedState, undefined);
  await t.throwsAsync(w.dp.apply(model), { message: new RegExp(`ipset ${netSet} exists as hash:ip`) });
  await execInNetns(w.h, 'ipset', ['destroy', netSet]);
  const ok = await w.dp.apply(model);
  t.true(ok.fullResync);
  t.truthy(w.dp.appliedState);

  await w.dp.removeAll();
  await w.dp.removeAll(); // idempotent
  for (const fam of [4, 6] as const) {
    const { stdout } = await execInNetns(w.h, fam === 4 ? 'iptables-save' : 'ip6tables-save', []);
    t.false(stdout.includes(w.prefix), `IPv${fam}: ${stdout}`);
  }
  t.deepEqual(await ourSets(w), []);
});

test('natOutgoing pools masquerade traffic to destinations outside every pool', async (t) => {
  const w = await world(t);
  // An "outside" host on a link of its own, with no route back to the pool: it can answer only
  // if the container's source address was rewritten to the host's.
  const outside = await w.reg.create('cpo');
  await ipIn(w.h, ['link', 'add', 'ext0', 'type', 'veth', 'peer', 'name', 'ext1']);
  await ipIn(w.h, ['link', 'set', 'dev', 'ext1', 'netns', outside]);
  await ipIn(w.h, ['addr', 'add', '10.67.0.1/24', 'dev', 'ext0']);
  await ipIn(w.h, ['link', 'set', 'dev', 'ext0', 'up']);
  await ipIn(outside, ['addr', 'add', '10.67.0.2/24', 'dev', 'ext1']);
  await ipIn(outside, ['link', 'set', 'dev', 'ext1', 'up']);
  setProfiles(w, networkProfile('net'));
  const a = await attach(w, { v4: '10.66.0.10', profiles: ['net'] });
  const b = await attach(w, { v4: '10.66.0.11', profiles: ['net'] });

  await w.dp.apply(modelOf(w));
  t.false(await ping(a.ns, '10.67.0.2', false), 'without natOutgoing the outside cannot answer');

  await w.dp.apply({ ...modelOf(w), natOutgoingPools: ['10.66.0.0/16'] });
  t.true(await ping(a.ns, '10.67.0.2', true), 'masqueraded to the host address');
  await check(t, w, a, b, { tcp: 8080 }, true);
});

/** The source address a listener in `toNs` sees for a TCP connection from `from` (busybox nc
 * answering with netstat -tn); undefined when the connection does not complete. */
async function sourceSeen(from: string, toNs: string, ip: string, port: number): Promise<string | undefined> {
  const listener = spawn('ip', ['netns', 'exec', toNs, BUSYBOX, 'nc', '-l', '-p', String(port), '-e', BUSYBOX, 'netstat', '-tn'], { stdio: 'ignore' });
  const exited = new Promise<void>((resolve) => listener.on('close', () => resolve()));
  try {
    for (let i = 0; ; i++) {
      const { stdout } = await execInNetns(toNs, 'ss', ['-ltnH', `sport = :${port}`]);
      if (stdout.trim() !== '') break;
      if (i > 200) throw new Error(`listener on ${ip}:${port} never came up`);
      await sleep(10);
    }
    try {
      const { stdout } = await execInNetns(from, BUSYBOX, ['nc', '-w', TCP_TIMEOUT_S, ip, String(port)], { timeoutMs: 15_000 });
      return acceptedPeer(stdout, port);
    } catch {
      return undefined;
    }
  } finally {
    if (listener.exitCode === null && listener.pid !== undefined) listener.kill('SIGKILL');
    await exited;
  }
}

test('IPv6 natOutgoing: masqueraded to the outside, never to another pool; other pools keep their address', async (t) => {
  const w = await world(t);
  // The outside on a link of its own (fd67::/64), with no route back to any pool.
  const outside = await w.reg.create('cpo');
  await ipIn(w.h, ['link', 'add', 'ext0', 'type', 'veth', 'peer', 'name', 'ext1']);
  await ipIn(w.h, ['link', 'set', 'dev', 'ext1', 'netns', outside]);
  await ipIn(w.h, ['-6', 'addr', 'add', 'fd67::1/64', 'dev', 'ext0', 'nodad']);
  await ipIn(w.h, ['link', 'set', 'dev', 'ext0', 'up']);
  await ipIn(outside, ['-6', 'addr', 'add', 'fd67::2/64', 'dev', 'ext1', 'nodad']);
  await ipIn(outside, ['link', 'set', 'dev', 'ext1', 'up']);
  setProfiles(w, networkProfile('net'));
  // a on the natOutgoing pool fd66::/64, b on fd68::/64, a pool without natOutgoing.
  const a = await attach(w, { v4: '10.66.0.10', v6: 'fd66::10', profiles: ['net'] });
  const b = await attach(w, { v4: '10.66.0.11', v6: 'fd68::11', profiles: ['net'] });
  await w.dp.apply({ ...modelOf(w), natOutgoingPools: ['fd66::/64'], allPools: ['10.66.0.0/16', 'fd66::/64', 'fd68::/64'] });

  t.is(await sourceSeen(a.ns, outside, 'fd67::2', 7001), 'fd67::1', 'to the outside: the host address');
  t.is(await sourceSeen(a.ns, b.ns, 'fd68::11', 7002), 'fd66::10', 'to another pool: its own address');
  t.is(await sourceSeen(b.ns, a.ns, 'fd66::10', 7003), 'fd68::11', 'and back');
  t.is(await sourceSeen(b.ns, outside, 'fd67::2', 7004), undefined, 'the pool without natOutgoing: the outside cannot answer');
});
