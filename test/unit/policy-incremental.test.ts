// Incremental rendering: a render that reuses the RenderCache of earlier renders must give exactly
// what a render from nothing gives, whatever sequence of changes led there (seeded random
// sequences, the model changed the way the agent changes it: a new object for what changed, the
// same objects for the rest); the same model again renders nothing; and PolicyState hands the
// renderer that kind of model.

import test from 'ava';
import { PolicyState } from '../../agent/policy-model';
import { Keys } from '../../datastore/keys';
import type { Logger } from '../../lib/log';
import { encodeProfile } from '../../model/profile';
import { diffPolicy } from '../../policy/diff';
import { defaultProfile } from '../../policy/profile-resource';
import {
  formatDesiredState,
  RenderCache,
  renderPolicy,
  type DesiredState,
  type LabelledEndpoint,
  type PolicyEndpoint,
  type PolicyInput,
} from '../../policy/render';
import type { Labels, Profile, Rule } from '../../policy/types';
import { mulberry32 } from '../harness/prng';

const PROFILE_NAMES = ['web', 'db', 'cache', 'a-network-name-far-too-long-for-a-chain-name', 'ops'];
const ROLES = ['web', 'db', 'ops'];

/** Everything an input is made of, as immutable records; a change replaces the record. */
interface World {
  locals: PolicyEndpoint[];
  remotes: LabelledEndpoint[];
  profiles: Map<string, Profile>;
  natOutgoingPools: string[];
  allPools: string[];
  prefix: string;
  markBit: number;
}

function makeProfile(name: string, random: () => number): Profile {
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(random() * xs.length)] as T;
  const ingress: Rule[] = [{ action: 'allow', source: { selector: `has(${name})` }, destination: {} }];
  if (random() < 0.5) {
    ingress.push({ action: 'allow', protocol: 'tcp', source: { selector: `role == '${pick(ROLES)}'` }, destination: { ports: [{ from: 80, to: 80 + Math.floor(random() * 3) }] } });
  }
  if (random() < 0.3) ingress.unshift({ action: 'deny', source: { nets: [pick(['203.0.113.0/24', '2001:db8:66::/48', '198.51.100.7'])] }, destination: {} });
  if (random() < 0.3) ingress.push({ action: 'allow', source: { notSelector: `role == '${pick(ROLES)}'`, notNets: ['10.99.0.0/16'] }, destination: {} });
  const egress: Rule[] = random() < 0.3 ? [{ action: 'log', protocol: 'udp', source: {}, destination: { ports: [{ from: 53, to: 53 }] } }] : [];
  egress.push({ action: 'allow', source: {}, destination: {} });
  const labelsToApply: Labels = random() < 0.8 ? { [name]: '' } : { [name]: '', extra: pick(ROLES) };
  return { name, labels: {}, annotations: {}, ingress, egress, labelsToApply };
}

function makeLocal(n: number, random: () => number): PolicyEndpoint {
  const hex = n.toString(16).padStart(3, '0');
  const profiles = PROFILE_NAMES.filter(() => random() < 0.35);
  // Now and then a profile no profile record exists for (fail closed: no allow from it).
  if (random() < 0.1) profiles.push('missing');
  return {
    id: `ep${hex}`,
    // The first character after the prefix spreads endpoints over dispatch leaves.
    hostIf: `cali${(n % 16).toString(16)}${hex}`,
    ipv4: [`10.65.${n >> 8}.${n & 255}`],
    ipv6: random() < 0.5 ? [`fd00:65::${hex}`] : [],
    profiles,
    ready: random() < 0.9,
  };
}

function makeRemote(n: number, random: () => number): LabelledEndpoint {
  const labels: Record<string, string> = { role: ROLES[n % ROLES.length] as string };
  for (const p of PROFILE_NAMES) if (random() < 0.3) labels[p] = '';
  // Now and then an invalid address: skipped with a warning that names its position.
  const ipv4 = random() < 0.05 ? ['not-an-address'] : [`10.66.${n >> 8}.${n & 255}/32`];
  return { ipv4, ipv6: random() < 0.3 ? [`fd00:66::${n.toString(16)}`] : [], labels };
}

function inputOf(w: World): PolicyInput {
  return {
    localEndpoints: w.locals,
    remoteAndLocalEndpoints: w.remotes,
    profiles: w.profiles,
    natOutgoingPools: w.natOutgoingPools,
    allPools: w.allPools,
    prefix: w.prefix,
    markBit: w.markBit,
  };
}

/** One random change, made the agent's way; returns a short description for failure messages. */
function change(w: World, random: () => number, next: () => number): string {
  const r = random();
  const at = <T>(xs: readonly T[]): number => Math.floor(random() * xs.length);
  if (r < 0.25) {
    w.locals = [...w.locals, makeLocal(next(), random)];
    return 'add local';
  }
  if (r < 0.35 && w.locals.length > 0) {
    const i = at(w.locals);
    w.locals = w.locals.filter((_, j) => j !== i);
    return 'remove local';
  }
  if (r < 0.45 && w.locals.length > 0) {
    const i = at(w.locals);
    const old = w.locals[i] as PolicyEndpoint;
    const fresh = makeLocal(next(), random);
    // Same interface and addresses, another profile list or readiness.
    w.locals = w.locals.map((e, j) => (j === i ? { ...old, profiles: fresh.profiles, ready: fresh.ready } : e));
    return 'change local';
  }
  if (r < 0.6) {
    w.remotes = [...w.remotes, makeRemote(next(), random)];
    return 'add remote';
  }
  if (r < 0.65 && w.remotes.length > 0) {
    const i = at(w.remotes);
    w.remotes = w.remotes.filter((_, j) => j !== i);
    return 'remove remote';
  }
  if (r < 0.72 && w.remotes.length > 0) {
    const i = at(w.remotes);
    w.remotes = w.remotes.map((e, j) => (j === i ? { ...e, labels: makeRemote(next(), random).labels } : e));
    return 'relabel remote';
  }
  // Profiles: a new map, or the same map updated in place (tests and other callers do that; only
  // the profile objects themselves are immutable).
  const inPlace = random() < 0.5;
  const profiles = inPlace ? w.profiles : new Map(w.profiles);
  w.profiles = profiles;
  if (r < 0.82) {
    const name = PROFILE_NAMES[at(PROFILE_NAMES)] as string;
    profiles.set(name, makeProfile(name, random));
    return `change profile ${name}${inPlace ? ' in place' : ''}`;
  }
  if (r < 0.86) {
    const name = PROFILE_NAMES[at(PROFILE_NAMES)] as string;
    profiles.delete(name);
    return `delete profile ${name}${inPlace ? ' in place' : ''}`;
  }
  if (r < 0.89) {
    w.natOutgoingPools = random() < 0.5 ? [] : ['10.65.0.0/16'];
    w.allPools = [...w.natOutgoingPools, '10.66.0.0/16', 'fd00::/16'];
    return 'pools';
  }
  if (r < 0.91) {
    w.prefix = w.prefix === 'cali' ? 'felix' : 'cali';
    return `prefix ${w.prefix}`;
  }
  if (r < 0.93) {
    w.markBit = w.markBit === 0x100000 ? 0x200000 : 0x100000;
    return 'mark';
  }
  if (r < 0.96) {
    // Equal content in new objects: content-keyed entries must still hit, or at least not lie.
    w.locals = w.locals.map((e) => ({ ...e, ipv4: [...e.ipv4], profiles: [...e.profiles] }));
    w.remotes = w.remotes.map((e) => ({ ...e, labels: { ...e.labels } }));
    w.profiles = new Map([...w.profiles].map(([k, p]) => [k, { ...p, ingress: [...p.ingress] }]));
    return 'same content, new objects';
  }
  return 'no change';
}

function text(s: DesiredState): string {
  return `${formatDesiredState(s, 4)}${formatDesiredState(s, 6)}${JSON.stringify([...s.sets])}${JSON.stringify(s.warnings)}`;
}

for (const seed of [1, 2, 3]) {
  test(`incremental render equals a full render over 100 random changes (seed ${seed})`, (t) => {
    const random = mulberry32(seed);
    let n = 0;
    const next = (): number => ++n;
    const profiles = new Map(PROFILE_NAMES.slice(0, 3).map((p) => [p, makeProfile(p, random)]));
    const w: World = {
      locals: Array.from({ length: 12 }, () => makeLocal(next(), random)),
      remotes: Array.from({ length: 8 }, () => makeRemote(next(), random)),
      profiles,
      natOutgoingPools: ['10.65.0.0/16'],
      allPools: ['10.65.0.0/16', '10.66.0.0/16'],
      prefix: 'cali',
      markBit: 0x100000,
    };
    const cache = new RenderCache();
    let last = renderPolicy(inputOf(w), cache);
    for (let step = 0; step < 100; step++) {
      const what = change(w, random, next);
      const input = inputOf(w);
      const incremental = renderPolicy(input, cache);
      const full = renderPolicy(input, new RenderCache());
      t.is(text(incremental), text(full), `seed ${seed} step ${step}: ${what}`);
      // What the dataplane writes: the same plan from either render (a new prefix starts over).
      const base = last.prefix === incremental.prefix ? last : undefined;
      t.deepEqual(diffPolicy(base, incremental, undefined, { insertInPlace: true }), diffPolicy(base, full, undefined, { insertInPlace: true }), `plan, step ${step}`);
      last = incremental;
    }
    t.true(w.locals.length > 16, 'the dispatch tree was exercised');
  });
}

test('a refused render leaves the cache usable: the next render is still exact', (t) => {
  const random = mulberry32(9);
  const cache = new RenderCache();
  const w: World = {
    locals: Array.from({ length: 20 }, (_, i) => makeLocal(i + 1, random)),
    remotes: [makeRemote(1, random)],
    profiles: new Map(PROFILE_NAMES.map((p) => [p, makeProfile(p, random)])),
    natOutgoingPools: [],
    allPools: ['10.65.0.0/16'],
    prefix: 'cali',
    markBit: 0x100000,
  };
  renderPolicy(inputOf(w), cache);
  const bad: Profile = { ...makeProfile('web', random), ingress: [{ action: 'allow', protocol: 'tcp', source: {}, destination: { ports: [{ from: 9, to: 1 }] } }] };
  const ok = { ...inputOf(w), localEndpoints: [...w.locals, makeLocal(99, random)] };
  t.throws(() => renderPolicy({ ...ok, profiles: new Map(w.profiles).set('web', bad) }, cache), { message: /invalid port range/ });
  t.is(text(renderPolicy(ok, cache)), text(renderPolicy(ok, new RenderCache())));
});

test('the same model again renders nothing: the same state, an empty plan', (t) => {
  const random = mulberry32(5);
  const cache = new RenderCache();
  const input = inputOf({
    locals: Array.from({ length: 30 }, (_, i) => makeLocal(i + 1, random)),
    remotes: Array.from({ length: 10 }, (_, i) => makeRemote(i + 1, random)),
    profiles: new Map(PROFILE_NAMES.map((p) => [p, makeProfile(p, random)])),
    natOutgoingPools: ['10.65.0.0/16'],
    allPools: ['10.65.0.0/16'],
    prefix: 'cali',
    markBit: 0x100000,
  });
  const first = renderPolicy(input, cache);
  const epoch = cache.epoch;
  // The dataplane spreads its parameters into the model: new outer object, same parts.
  const again = renderPolicy({ ...input }, cache);
  t.is(again, first);
  t.is(cache.epoch, epoch, 'no render pass ran');
  const plan = diffPolicy(first, again);
  t.deepEqual([plan.ipsetBefore, plan.iptables[4], plan.iptables[6], plan.ipsetAfter], ['', '', '', '']);
});

test('one endpoint added: only its dispatch leaf is new; every other chain and set is the same array', (t) => {
  const random = mulberry32(6);
  const cache = new RenderCache();
  const locals = Array.from({ length: 40 }, (_, i) => makeLocal(i + 1, random)).map((e) => ({ ...e, ready: true, ipv6: [] }));
  const w: World = {
    locals,
    remotes: Array.from({ length: 10 }, (_, i) => makeRemote(i + 1, random)),
    profiles: new Map(PROFILE_NAMES.map((p) => [p, makeProfile(p, random)])),
    natOutgoingPools: [],
    allPools: ['10.65.0.0/16'],
    prefix: 'cali',
    markBit: 0x100000,
  };
  const before = renderPolicy(inputOf(w), cache);
  // A profile list other endpoints already use, and labels no selector matches: nothing shared
  // changes.
  const added: PolicyEndpoint = { ...makeLocal(0x200, random), hostIf: 'cali3added', profiles: [...(locals[0] as PolicyEndpoint).profiles], ready: true, ipv6: [] };
  w.locals = [...w.locals, added];
  const after = renderPolicy(inputOf(w), cache);
  const changed = [...after.filter[4]].filter(([chain, rules]) => before.filter[4].get(chain) !== rules).map(([c]) => c);
  t.deepEqual(changed.sort(), ['cali-from-wl-dispatch-3', 'cali-to-wl-dispatch-3']);
  t.is(after.sets.size, before.sets.size);
  for (const [name, spec] of after.sets) t.true(spec === before.sets.get(name), name);
});

// ---------------------------------------------------------------------------------------------
// PolicyState: the model it hands over shares what did not change

const keys = new Keys('/t');
const log: Logger = { debug: () => undefined, info: () => undefined, warn: () => undefined, error: () => undefined };

function endpointKv(node: string, id: string, extra: Record<string, unknown> = {}): { key: string; value: string; revision: string } {
  const value = JSON.stringify({ id, networkId: 'n'.repeat(12), node, hostInterface: `cali${id.slice(0, 11)}`, ipv4: [`198.18.0.${id.length}/32`], ipv6: [], profiles: ['net1'], createdAt: 'x', ...extra });
  return { key: keys.endpoint(node, id), value, revision: '1' };
}

test('PolicyState: the same model until something changes, and the same objects for what did not', (t) => {
  const m = new PolicyState(keys, 'a', log);
  const profileKv = (p: Profile) => ({ key: keys.profile(p.name), value: encodeProfile(p), revision: '1' });
  m.update(keys.profile('net1'), profileKv(defaultProfile('net1', 'a')));
  const one = endpointKv('a', 'aaaaaaaaaaaa');
  const two = endpointKv('b', 'bbbbbbbbbbbb');
  m.update(one.key, one);
  m.update(two.key, two);
  const first = m.input();
  t.is(m.input(), first, 'nothing changed: the same model');

  const three = endpointKv('a', 'cccccccccccc');
  t.true(m.update(three.key, three));
  const second = m.input();
  t.not(second, first);
  t.is(second.localEndpoints[0], first.localEndpoints[0], 'an unchanged local endpoint keeps its object');
  t.is(second.remoteAndLocalEndpoints[1], first.remoteAndLocalEndpoints[1], 'an unchanged remote endpoint keeps its object');
  t.is(second.profiles, first.profiles, 'no profile changed: the same map');

  // A rule change with the same labelsToApply: new profiles map, endpoints' labels unchanged.
  const edited = { ...defaultProfile('net1', 'a'), egress: [] };
  t.true(m.update(keys.profile('net1'), profileKv(edited)));
  const third = m.input();
  t.not(third.profiles, second.profiles);
  t.is(third.remoteAndLocalEndpoints[0], second.remoteAndLocalEndpoints[0]);

  // labelsToApply changed: the endpoints using the profile get new labels.
  t.true(m.update(keys.profile('net1'), profileKv({ ...edited, labelsToApply: { net1: '', tier: 'x' } })));
  const fourth = m.input();
  t.not(fourth.remoteAndLocalEndpoints[0], third.remoteAndLocalEndpoints[0]);
  t.deepEqual(fourth.remoteAndLocalEndpoints[0]?.labels, { net1: '', tier: 'x' });
  t.is(fourth.localEndpoints[0], third.localEndpoints[0], 'what a local endpoint is does not depend on labels');

  // A changed endpoint record: new objects with the new content.
  const moved = endpointKv('a', 'aaaaaaaaaaaa', { profiles: ['net1', 'net2'], ready: false });
  t.true(m.update(moved.key, moved));
  const fifth = m.input();
  t.like(fifth.localEndpoints.find((e) => e.id === 'aaaaaaaaaaaa'), { profiles: ['net1', 'net2'], ready: false });
  t.not(fifth.remoteAndLocalEndpoints[0], fourth.remoteAndLocalEndpoints[0]);
});
