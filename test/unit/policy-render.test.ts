// Rule → iptables rendering: golden outputs (test/fixtures/policy/*.txt, regenerate with
// UPDATE_GOLDEN=1 after checking the change by eye) and table-driven checks of names and refusals.

import test, { type ExecutionContext } from 'ava';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { InvalidRequestError } from '../../lib/errors';
import {
  DISPATCH_FLAT_MAX,
  endpointChainName,
  formatDesiredState,
  MAX_CHAIN_NAME_LENGTH,
  MAX_SET_NAME_LENGTH,
  portChunks,
  profileChainName,
  RenderCache,
  renderPolicy,
  selectorSetName,
  type DesiredState,
  type LabelledEndpoint,
  type PolicyEndpoint,
  type PolicyInput,
} from '../../policy/render';
import type { Profile, Rule } from '../../policy/types';

const GOLDEN_DIR = path.resolve(__dirname, '../../../test/fixtures/policy');

function golden(t: ExecutionContext, name: string, actual: string): void {
  const file = path.join(GOLDEN_DIR, `${name}.txt`);
  if (process.env.UPDATE_GOLDEN === '1') {
    mkdirSync(GOLDEN_DIR, { recursive: true });
    writeFileSync(file, actual);
  }
  if (!existsSync(file)) {
    t.fail(`golden file ${file} is missing (UPDATE_GOLDEN=1 writes it)`);
    return;
  }
  t.is(actual, readFileSync(file, 'utf8'), `golden ${name}`);
}

function goldenState(t: ExecutionContext, name: string, state: DesiredState, families: Array<4 | 6> = [4, 6]): void {
  golden(t, name, families.map((f) => `# ---- IPv${f}\n${formatDesiredState(state, f)}`).join(''));
}

function profile(name: string, ingress: Rule[], egress: Rule[] = [allowAll]): Profile {
  return { name, labels: {}, annotations: {}, ingress, egress, labelsToApply: { [name]: '' } };
}

const allowAll: Rule = { action: 'allow', source: {}, destination: {} };

/** Calico's default for a network's profile: ingress from the same profile, all egress. */
function defaultProfile(name: string): Profile {
  return profile(name, [{ action: 'allow', source: { selector: `has(${name})` }, destination: {} }]);
}

function ep(n: number, profiles: string[], extra: Partial<PolicyEndpoint> = {}): PolicyEndpoint {
  const hex = n.toString(16).padStart(2, '0');
  return {
    id: `${hex}`.repeat(32),
    hostIf: `cali${hex.repeat(5)}a`,
    ipv4: [`10.65.0.${n}`],
    ipv6: [],
    profiles,
    ready: true,
    ...extra,
  };
}

function input(over: Partial<PolicyInput> & Pick<PolicyInput, 'localEndpoints' | 'profiles'>): PolicyInput {
  const remote: LabelledEndpoint[] = over.localEndpoints.map((e) => ({
    ipv4: e.ipv4,
    ipv6: e.ipv6,
    labels: Object.fromEntries(e.profiles.map((p) => [p, ''])),
  }));
  return {
    prefix: 'cali',
    markBit: 0x100000,
    remoteAndLocalEndpoints: remote,
    natOutgoingPools: [],
    allPools: ['10.65.0.0/16'],
    ...over,
  };
}

function profiles(...ps: Profile[]): Map<string, Profile> {
  return new Map(ps.map((p) => [p.name, p]));
}

test('golden: default profile, two local endpoints, one remote peer, natOutgoing', (t) => {
  const local = [ep(1, ['net-a']), ep(2, ['net-a'])];
  const state = renderPolicy(
    input({
      localEndpoints: local,
      profiles: profiles(defaultProfile('net-a'), defaultProfile('net-unused')),
      remoteAndLocalEndpoints: [
        { ipv4: ['10.65.0.1'], ipv6: [], labels: { 'net-a': '' } },
        { ipv4: ['10.65.0.2'], ipv6: [], labels: { 'net-a': '' } },
        { ipv4: ['10.65.1.9'], ipv6: [], labels: { 'net-a': '' } }, // on another host
        { ipv4: ['10.65.1.10'], ipv6: [], labels: { 'net-b': '' } },
      ],
      natOutgoingPools: ['10.65.0.0/16'],
      allPools: ['10.65.0.0/16', '10.66.0.0/16'],
    }),
  );
  goldenState(t, 'default-profile', state, [4]);
  // Only what local endpoints need: no chains or sets for the unused profile.
  t.false([...state.filter[4].keys()].some((c) => c.includes('net-unused')));
  t.deepEqual(state.sets.get(selectorSetName('cali', 4, 'has(net-a)'))?.members, ['10.65.0.1', '10.65.0.2', '10.65.1.9']);
  t.false(state.sets.has(selectorSetName('cali', 4, 'has(net-unused)')));
});

test('golden: allow TCP 8080 from a selector', (t) => {
  const p = profile('net-b', [
    { action: 'allow', protocol: 'tcp', source: { selector: "role == 'frontend'" }, destination: { ports: [{ from: 8080, to: 8080 }] } },
  ]);
  const state = renderPolicy(
    input({
      localEndpoints: [ep(3, ['net-b'])],
      profiles: profiles(p),
      remoteAndLocalEndpoints: [
        { ipv4: ['10.65.0.3'], ipv6: [], labels: { 'net-b': '' } },
        { ipv4: ['10.65.0.4'], ipv6: [], labels: { role: 'frontend' } },
        { ipv4: ['10.65.0.5'], ipv6: [], labels: { role: 'backend' } },
      ],
    }),
  );
  goldenState(t, 'allow-tcp-8080-from-selector', state, [4]);
  t.deepEqual(state.sets.get(selectorSetName('cali', 4, "role == 'frontend'"))?.members, ['10.65.0.4']);
});

test('golden: deny and log keep their order around allows', (t) => {
  const p = profile('net-c', [
    { action: 'log', protocol: 'tcp', source: {}, destination: { ports: [{ from: 22, to: 22 }] } },
    { action: 'deny', protocol: 'tcp', source: { selector: "role == 'untrusted'" }, destination: {} },
    { action: 'allow', protocol: 'tcp', source: {}, destination: {} },
    { action: 'deny', source: {}, destination: {} },
  ], [
    { action: 'deny', protocol: 'udp', source: {}, destination: { ports: [{ from: 53, to: 53 }] } },
    allowAll,
  ]);
  goldenState(t, 'deny-log-order', renderPolicy(input({ localEndpoints: [ep(4, ['net-c'])], profiles: profiles(p) })), [4]);
});

test('golden: nets and notNets (IPv4 and IPv6 mixed, /0, bare addresses)', (t) => {
  const p = profile('net-d', [
    { action: 'allow', source: { nets: ['192.168.0.0/16', '10.1.2.3', 'fd00::/8'], notNets: ['192.168.5.0/24'] }, destination: {} },
    { action: 'allow', source: { nets: ['172.16.0.0/12'] }, destination: { notNets: ['0.0.0.0/0'] } },
    { action: 'deny', source: { notNets: ['fd00::/16', '::/0'] }, destination: {} },
  ], [
    { action: 'allow', source: {}, destination: { nets: ['10.0.0.0/8', '10.0.0.0/8'] } },
  ]);
  const state = renderPolicy(input({ localEndpoints: [ep(5, ['net-d'], { ipv6: ['fd65::5'] })], profiles: profiles(p) }));
  goldenState(t, 'nets-notnets', state);
  const v4Nets = [...state.sets].filter(([, s]) => s.type === 'hash:net' && s.family === 4).map(([, s]) => s.members);
  t.true(v4Nets.some((m) => m.join() === '0.0.0.0/1,128.0.0.0/1'), 'hash:net cannot hold /0: split in halves');
  t.true(v4Nets.some((m) => m.join() === '10.1.2.3,192.168.0.0/16'), 'bare address as ipset prints it');
});

test('golden: port ranges and more than 15 ports split across multiport matches', (t) => {
  const many = Array.from({ length: 20 }, (_, i) => ({ from: 1000 + i, to: 1000 + i }));
  const ranges = Array.from({ length: 9 }, (_, i) => ({ from: 2000 + i * 10, to: 2005 + i * 10 }));
  const p = profile('net-e', [
    { action: 'allow', protocol: 'tcp', source: {}, destination: { ports: many } },
    { action: 'allow', protocol: 'udp', source: { ports: [{ from: 53, to: 53 }] }, destination: { ports: ranges } },
    { action: 'deny', protocol: 'sctp', source: {}, destination: { notPorts: many } },
    { action: 'allow', protocol: 6, source: { notPorts: [{ from: 1, to: 1023 }] }, destination: { ports: [{ from: 0, to: 65535 }] } },
  ]);
  goldenState(t, 'ports', renderPolicy(input({ localEndpoints: [ep(6, ['net-e'])], profiles: profiles(p) })), [4]);
});

test('portChunks: 15 slots per match, a range counts twice', (t) => {
  const single = (n: number) => ({ from: n, to: n });
  t.deepEqual(portChunks([]), []);
  t.deepEqual(portChunks(Array.from({ length: 15 }, (_, i) => single(i + 1))).length, 1);
  t.deepEqual(portChunks(Array.from({ length: 16 }, (_, i) => single(i + 1))).length, 2);
  t.deepEqual(portChunks(Array.from({ length: 7 }, (_, i) => ({ from: i * 10, to: i * 10 + 1 })).concat([single(99)])), [
    '0:1,10:11,20:21,30:31,40:41,50:51,60:61,99',
  ]);
  t.deepEqual(portChunks(Array.from({ length: 8 }, (_, i) => ({ from: i * 10, to: i * 10 + 1 }))), [
    '0:1,10:11,20:21,30:31,40:41,50:51,60:61',
    '70:71',
  ]);
});

test('golden: ICMP types and codes, negated, per family', (t) => {
  const p = profile('net-f', [
    { action: 'allow', protocol: 'icmp', icmp: { type: 8 }, source: {}, destination: {} },
    { action: 'deny', protocol: 'icmp', icmp: { type: 3, code: 1 }, source: {}, destination: {} },
    { action: 'allow', protocol: 'icmp', notICMP: { type: 5 }, source: {}, destination: {} },
    { action: 'allow', protocol: 'icmpv6', icmp: { type: 128, code: 0 }, source: {}, destination: {} },
    { action: 'allow', protocol: 58, source: {}, destination: {} },
    { action: 'allow', protocol: 1, source: {}, destination: {} },
  ]);
  goldenState(t, 'icmp', renderPolicy(input({ localEndpoints: [ep(7, ['net-f'], { ipv6: ['fd65::7'] })], profiles: profiles(p) })));
});

test('golden: IPv6 endpoints, selector sets per family, natOutgoing for both', (t) => {
  const p = profile('net-g', [{ action: 'allow', source: { selector: 'has(net-g)' }, destination: {} }]);
  const state = renderPolicy(
    input({
      localEndpoints: [ep(8, ['net-g'], { ipv6: ['FD65:0::8', 'fd65::80/128'] }), ep(9, ['net-g'], { ipv4: [], ipv6: ['fd65::9'] })],
      profiles: profiles(p),
      remoteAndLocalEndpoints: [
        { ipv4: ['10.65.0.8'], ipv6: ['fd65::8', 'fd65::80'], labels: { 'net-g': '' } },
        { ipv4: [], ipv6: ['fd65::9'], labels: { 'net-g': '' } },
        { ipv4: ['not-an-ip'], ipv6: ['fd65::1:0:0:0:a'], labels: { 'net-g': '' } },
      ],
      natOutgoingPools: ['10.65.0.0/16', 'fd65::/64'],
      allPools: ['10.65.0.0/16', 'fd65::/64'],
    }),
  );
  goldenState(t, 'ipv6', state);
  t.deepEqual(state.sets.get(selectorSetName('cali', 6, 'has(net-g)'))?.members, ['fd65:0:0:1::a', 'fd65::8', 'fd65::80', 'fd65::9']);
  t.deepEqual(state.warnings, ['endpoint #2: ignored invalid IPv4 address "not-an-ip"']);
  // An endpoint without IPv4 addresses has nothing in IPv4: it sends nothing through dispatch
  // (anti-spoofing), and nothing is routed to it (the DROP stands for both).
  t.false(state.filter[4].get('cali-from-wl-dispatch')?.some((r) => r.includes('cali09')));
  t.false(state.filter[4].get('cali-to-wl-dispatch')?.some((r) => r.includes('cali09')));
});

test('NAT: only natOutgoing pools masquerade, and never to an address inside any pool, in both families', (t) => {
  const state = renderPolicy(
    input({
      localEndpoints: [ep(1, ['a'])],
      profiles: profiles(defaultProfile('a')),
      // 10.66/16 and fd66::/64 do not masquerade, and 10.67/16 is disabled (its addresses may
      // still be in use): all three are destinations that must never be masqueraded to.
      natOutgoingPools: ['10.65.0.0/16', 'fd65::/64'],
      allPools: ['10.65.0.0/16', '10.66.0.0/16', '10.67.0.0/16', 'fd65::/64', 'fd66::/64'],
    }),
  );
  t.deepEqual(state.sets.get('cali-4-masq')?.members, ['10.65.0.0/16']);
  t.deepEqual(state.sets.get('cali-4-pools')?.members, ['10.65.0.0/16', '10.66.0.0/16', '10.67.0.0/16']);
  t.deepEqual(state.sets.get('cali-6-masq')?.members, ['fd65::/64']);
  t.deepEqual(state.sets.get('cali-6-pools')?.members, ['fd65::/64', 'fd66::/64']);
  for (const family of [4, 6] as const) {
    t.deepEqual(state.nat[family].get('cali-POSTROUTING'), [
      `-m set --match-set cali-${family}-masq src -m set ! --match-set cali-${family}-pools dst -m comment --comment "natOutgoing pool to outside all pools" -j MASQUERADE`,
    ], `IPv${family}`);
  }
});

test('NAT: no natOutgoing pool of a family, no rule and no sets for it', (t) => {
  const state = renderPolicy(
    input({ localEndpoints: [ep(1, ['a'])], profiles: profiles(defaultProfile('a')), natOutgoingPools: ['fd65::/64'], allPools: ['10.65.0.0/16', 'fd65::/64'] }),
  );
  t.deepEqual(state.nat[4].get('cali-POSTROUTING'), []);
  t.false(state.sets.has('cali-4-masq'));
  t.is(state.nat[6].get('cali-POSTROUTING')?.length, 1);
});

test('IPv6 can be turned off', (t) => {
  const state = renderPolicy({ ...input({ localEndpoints: [ep(1, ['a'])], profiles: profiles(defaultProfile('a')) }), ipv6: false });
  t.is(state.filter[6].size, 0);
  t.is(state.nat[6].size, 0);
  t.deepEqual(state.jumps[6], []);
  t.false([...state.sets.values()].some((s) => s.family === 6));
});

test('golden: two profiles on one endpoint, evaluated in order', (t) => {
  const state = renderPolicy(
    input({
      localEndpoints: [ep(10, ['net-h', 'missing-profile', 'shared', 'net-h'])],
      profiles: profiles(defaultProfile('net-h'), profile('shared', [{ action: 'allow', protocol: 'tcp', source: {}, destination: { ports: [{ from: 443, to: 443 }] } }], [])),
    }),
  );
  goldenState(t, 'two-profiles', state, [4]);
});

test('golden: an endpoint that is not ready has no chains and is absent from dispatch', (t) => {
  const state = renderPolicy(
    input({
      localEndpoints: [ep(11, ['net-i']), ep(12, ['net-i', 'only-pending'], { ready: false })],
      profiles: profiles(defaultProfile('net-i'), defaultProfile('only-pending')),
    }),
  );
  goldenState(t, 'not-ready', state, [4]);
  const chains = [...state.filter[4].keys()].join(' ');
  t.false(chains.includes('cali0c'));
  t.false(chains.includes('only-pending'), 'profiles used only by pending endpoints are not rendered');
});

test('golden: long and unusual profile names are hashed deterministically', (t) => {
  const long = 'a-very-long-network-name-that-does-not-fit';
  const odd = 'weird name;-j ACCEPT';
  const state = renderPolicy(
    input({ prefix: 'calico12', localEndpoints: [ep(13, [long, odd])], profiles: profiles(defaultProfile('netj'), profile(long, []), profile(odd, [])) }),
  );
  goldenState(t, 'hashed-names', state, [4]);
  t.is(profileChainName('calico12', 'ingress', long), profileChainName('calico12', 'ingress', long));
  t.not(profileChainName('calico12', 'ingress', long), profileChainName('calico12', 'egress', long));
  t.regex(profileChainName('calico12', 'ingress', odd), /^calico12-pri-_[0-9a-f]{14}$/);
  for (const chain of state.filter[4].keys()) t.true(chain.length <= MAX_CHAIN_NAME_LENGTH, chain);
  for (const set of state.sets.keys()) t.true(set.length <= MAX_SET_NAME_LENGTH, set);
  t.false(formatDesiredState(state, 4).includes('weird'));
});

test('name limits hold at the longest prefix and interface name', (t) => {
  const local = [ep(14, ['x'], { hostIf: 'califfffffffff1' })];
  const state = renderPolicy(
    input({
      prefix: 'abcdefgh',
      localEndpoints: local,
      profiles: profiles(profile('x', [{ action: 'allow', source: { selector: 'has(x)', nets: ['10.0.0.0/8'] }, destination: {} }])),
      natOutgoingPools: ['10.65.0.0/16'],
    }),
  );
  for (const chain of state.filter[4].keys()) t.true(chain.length <= MAX_CHAIN_NAME_LENGTH, chain);
  for (const set of state.sets.keys()) t.true(set.length <= MAX_SET_NAME_LENGTH, set);
});

test('more than DISPATCH_FLAT_MAX endpoints: dispatch branches on the first character after the prefix', (t) => {
  const hex = '0123456789abcdef';
  const local = Array.from({ length: DISPATCH_FLAT_MAX + 4 }, (_, i) =>
    ep(i + 1, ['p'], { hostIf: `cali${hex[i % 16]}${String(i).padStart(10, '0')}` }),
  );
  const state = renderPolicy(input({ localEndpoints: local, profiles: profiles(defaultProfile('p')) }));
  const root = state.filter[4].get('cali-from-wl-dispatch') ?? [];
  t.is(root.length, 17);
  t.is(root[0], '-i cali0+ -g cali-from-wl-dispatch-0');
  t.is(root[16], '-m comment --comment "unknown or not ready workload" -j DROP');
  t.deepEqual(state.filter[4].get('cali-from-wl-dispatch-0'), [
    '-s 10.65.0.1/32 -i cali00000000000 -g cali-fw-p',
    '-s 10.65.0.17/32 -i cali00000000016 -g cali-fw-p',
    '-m comment --comment "unknown or not ready workload" -j DROP',
  ]);
  t.deepEqual(state.filter[4].get('cali-to-wl-dispatch-f'), [
    '-o calif0000000015 -g cali-tw-p',
    '-m comment --comment "unknown or not ready workload" -j DROP',
  ]);
  t.is(state.filter[4].get('cali-to-wl-dispatch')?.[15], '-o calif+ -g cali-to-wl-dispatch-f');
});

test('endpoints with the same profile list share its policy chains; dispatch stays per interface', (t) => {
  const ps = profiles(defaultProfile('a'), defaultProfile('b'));
  const state = renderPolicy(
    input({
      localEndpoints: [
        ep(1, ['a']),
        ep(2, ['a']),
        ep(3, ['a', 'b']),
        ep(4, ['b', 'a']), // another order is another list
        ep(5, ['a', 'missing', 'b', 'a']), // what exists, once, in order: the same list as ep 3
        ep(6, []),
        ep(7, ['missing']), // no existing profile: like none
      ],
      profiles: ps,
    }),
  );
  const ab = endpointChainName('cali', 'fw', ['a', 'b']);
  const ba = endpointChainName('cali', 'fw', ['b', 'a']);
  const endpointChains = [...state.filter[4].keys()].filter((c) => /^cali-[ft]w-/.test(c));
  t.deepEqual(endpointChains, [
    'cali-fw-_none',
    ab,
    ba,
    'cali-fw-a',
    'cali-tw-_none',
    ab.replace('-fw-', '-tw-'),
    ba.replace('-fw-', '-tw-'),
    'cali-tw-a',
  ].sort());
  t.deepEqual(state.filter[4].get('cali-from-wl-dispatch'), [
    '-s 10.65.0.1/32 -i cali0101010101a -g cali-fw-a',
    '-s 10.65.0.2/32 -i cali0202020202a -g cali-fw-a',
    `-s 10.65.0.3/32 -i cali0303030303a -g ${ab}`,
    `-s 10.65.0.4/32 -i cali0404040404a -g ${ba}`,
    `-s 10.65.0.5/32 -i cali0505050505a -g ${ab}`,
    '-s 10.65.0.6/32 -i cali0606060606a -g cali-fw-_none',
    '-s 10.65.0.7/32 -i cali0707070707a -g cali-fw-_none',
    '-m comment --comment "unknown or not ready workload" -j DROP',
  ]);
  t.is(state.filter[4].get('cali-to-wl-dispatch')?.[4], `-o cali0505050505a -g ${ab.replace('-fw-', '-tw-')}`);
  t.deepEqual(state.filter[4].get(ab), [
    '-j cali-pro-a',
    '-m mark ! --mark 0x100000/0x100000 -j cali-pro-b',
    '-m mark ! --mark 0x100000/0x100000 -m comment --comment "no profile allowed this egress" -j DROP',
  ]);
  // No profile: everything is dropped, both ways.
  t.deepEqual(state.filter[4].get('cali-fw-_none'), [
    '-m comment --comment "no profile allowed this egress" -j DROP',
  ]);
  t.deepEqual(state.filter[4].get('cali-tw-_none'), [
    '-m comment --comment "no profile allowed this ingress" -j DROP',
  ]);
  // IPv4-only endpoints: none of it in IPv6, where dispatch drops everything.
  for (const c of endpointChains) t.is(state.filter[6].get(c), undefined, c);
  t.deepEqual(state.filter[6].get('cali-to-wl-dispatch'), ['-m comment --comment "unknown or not ready workload" -j DROP']);
  t.deepEqual([...state.filter[6].keys()].filter((c) => c.startsWith('cali-pr')), []);
});

const endpointChainNames: Array<[string, string, readonly string[], string | RegExp]> = [
  ['one short profile: its name', 'cali', ['net-a'], 'cali-fw-net-a'],
  ['no profile', 'cali', [], 'cali-fw-_none'],
  ['a profile named like the empty tag is still literal', 'cali', ['none'], 'cali-fw-none'],
  ['longest literal at the longest prefix (28 characters)', 'abcdefgh', ['p'.repeat(16)], `abcdefgh-fw-${'p'.repeat(16)}`],
  ['one character too long: hashed', 'abcdefgh', ['p'.repeat(17)], /^abcdefgh-fw-_[0-9a-f]{14}$/],
  ['unsafe characters: hashed', 'cali', ['x -j ACCEPT'], /^cali-fw-_[0-9a-f]{14}$/],
  ['a name that starts with _: hashed', 'cali', ['_none'], /^cali-fw-_[0-9a-f]{14}$/],
  ['two profiles: hashed', 'cali', ['a', 'b'], /^cali-fw-_[0-9a-f]{14}$/],
];

for (const [name, prefix, list, want] of endpointChainNames) {
  test(`endpointChainName: ${name}`, (t) => {
    const got = endpointChainName(prefix, 'fw', list);
    if (typeof want === 'string') t.is(got, want);
    else t.regex(got, want);
    t.true(got.length <= MAX_CHAIN_NAME_LENGTH);
    t.is(endpointChainName(prefix, 'tw', list), got.replace('-fw-', '-tw-'));
  });
}

test('endpointChainName: the list is encoded unambiguously', (t) => {
  const names = [['a', 'b'], ['b', 'a'], ['a,b'], ['a","b'], ['a', 'b', 'c'], ['ab']].map((l) => endpointChainName('cali', 'fw', l));
  t.is(new Set(names).size, names.length);
  t.is(endpointChainName('cali', 'fw', ['a', 'b']), endpointChainName('cali', 'fw', ['a', 'b']));
});

test('a render cache never changes the output (prefixes, marks, profile lists, edits)', (t) => {
  const cache = new RenderCache();
  const a = defaultProfile('a');
  const steps: PolicyInput[] = [
    input({ localEndpoints: [ep(1, ['a']), ep(2, [])], profiles: profiles(a) }),
    // Another prefix with the same lists: the empty list's chain must carry the new prefix.
    input({ prefix: 'other', localEndpoints: [ep(1, ['a']), ep(2, [])], profiles: profiles(a) }),
    input({ markBit: 0x200000, localEndpoints: [ep(1, ['a']), ep(2, [])], profiles: profiles(a) }),
    input({ localEndpoints: [ep(1, ['a', 'b']), ep(2, ['b'])], profiles: profiles(a) }),
    input({ localEndpoints: [ep(1, ['a', 'b']), ep(2, ['b'])], profiles: profiles(a, defaultProfile('b')) }),
    input({ localEndpoints: [ep(1, ['a']), ep(2, [])], profiles: profiles(a) }),
  ];
  for (const [i, step] of steps.entries()) {
    const cached = renderPolicy(step, cache);
    const fresh = renderPolicy(step, new RenderCache());
    for (const f of [4, 6] as const) t.is(formatDesiredState(cached, f), formatDesiredState(fresh, f), `step ${i} IPv${f}`);
  }
});

test('rendering is deterministic and independent of input order', (t) => {
  const a = [ep(1, ['p']), ep(2, ['p'])];
  const ps = profiles(defaultProfile('p'));
  const one = renderPolicy(input({ localEndpoints: a, profiles: ps }));
  const two = renderPolicy(input({ localEndpoints: [...a].reverse(), profiles: ps, remoteAndLocalEndpoints: [...input({ localEndpoints: a, profiles: ps }).remoteAndLocalEndpoints].reverse() }));
  t.is(formatDesiredState(one, 4), formatDesiredState(two, 4));
});

const refusals: Array<[string, () => unknown, RegExp]> = [
  ['prefix with a dash', () => renderPolicy(input({ prefix: 'ca-li', localEndpoints: [], profiles: new Map() })), /invalid policy chain prefix/],
  ['prefix too long', () => renderPolicy(input({ prefix: 'abcdefghi', localEndpoints: [], profiles: new Map() })), /invalid policy chain prefix/],
  ['mark not one bit', () => renderPolicy(input({ markBit: 0x300000, localEndpoints: [], profiles: new Map() })), /invalid policy mark bit/],
  ['mark zero', () => renderPolicy(input({ markBit: 0, localEndpoints: [], profiles: new Map() })), /invalid policy mark bit/],
  ['interface name injection', () => renderPolicy(input({ localEndpoints: [ep(1, [], { hostIf: 'cali1 -j ACCEPT' })], profiles: new Map() })), /invalid host interface name/],
  ['interface outside prefix', () => renderPolicy(input({ localEndpoints: [ep(1, [], { hostIf: 'eth0' })], profiles: new Map() })), /does not start with cali/],
  ['two endpoints on one interface', () => renderPolicy(input({ localEndpoints: [ep(1, []), ep(1, [])], profiles: new Map() })), /used by two local endpoints/],
  ['local address not an IP', () => renderPolicy(input({ localEndpoints: [ep(1, [], { ipv4: ['10.0.0.1 -j ACCEPT'] })], profiles: new Map() })), /invalid IPv4 address/],
  ['local IPv6 in the IPv4 list', () => renderPolicy(input({ localEndpoints: [ep(1, [], { ipv4: ['fd00::1'] })], profiles: new Map() })), /invalid IPv4 address/],
  ...(
    [
      ['protocol 0 (would mean all)', { action: 'allow', protocol: 0, source: {}, destination: {} }, /invalid protocol number 0/],
      ['protocol 256', { action: 'allow', protocol: 256, source: {}, destination: {} }, /invalid protocol number 256/],
      ['protocol name', { action: 'allow', protocol: 'tcp -j ACCEPT', source: {}, destination: {} }, /invalid protocol/],
      ['ports without protocol', { action: 'allow', source: {}, destination: { ports: [{ from: 80, to: 80 }] } }, /ports need protocol/],
      ['ports with icmp', { action: 'allow', protocol: 'icmp', source: {}, destination: { notPorts: [{ from: 80, to: 80 }] } }, /ports need protocol/],
      ['port 70000', { action: 'allow', protocol: 'tcp', source: {}, destination: { ports: [{ from: 70000, to: 70000 }] } }, /invalid port range/],
      ['reversed range', { action: 'allow', protocol: 'tcp', source: {}, destination: { ports: [{ from: 90, to: 80 }] } }, /invalid port range/],
      ['icmp type with tcp', { action: 'allow', protocol: 'tcp', icmp: { type: 8 }, source: {}, destination: {} }, /needs protocol icmp/],
      ['icmp code 256', { action: 'allow', protocol: 'icmp', icmp: { type: 3, code: 256 }, source: {}, destination: {} }, /invalid ICMP code/],
      ['bad CIDR', { action: 'deny', source: { nets: ['10.0.0.0/33'] }, destination: {} }, /prefix length/],
      ['CIDR with host bits', { action: 'deny', source: { notNets: ['10.0.0.1/8'] }, destination: {} }, /host bits/],
      ['CIDR injection', { action: 'deny', source: { nets: ['10.0.0.0/8 -j ACCEPT'] }, destination: {} }, /invalid net/],
      ['bad selector', { action: 'allow', source: { selector: "role == 'a" }, destination: {} }, /selector/],
      ['bad action', { action: 'accept', source: {}, destination: {} }, /invalid rule action/],
    ] as Array<[string, unknown, RegExp]>
  ).map(([name, rule, re]): [string, () => unknown, RegExp] => [
    name,
    () => renderPolicy(input({ localEndpoints: [ep(1, ['p'])], profiles: profiles(profile('p', [rule as Rule])) })),
    re,
  ]),
];

for (const [name, fn, re] of refusals) {
  test(`refused: ${name}`, (t) => {
    const err = t.throws(fn, { instanceOf: InvalidRequestError });
    t.regex(err?.message ?? '', re);
  });
}
