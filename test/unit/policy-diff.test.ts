// Diffing rendered policy: a change rewrites only what it must; against a kernel snapshot the
// top-level jumps are healed and everything of ours that is not wanted is removed.

import test from 'ava';
import { DataplaneError } from '../../lib/errors';
import {
  diffPolicy,
  emptyDesiredState,
  parseIpsetSave,
  parseIptablesSave,
  type KernelSnapshot,
  type PolicyPlan,
} from '../../policy/diff';
import {
  endpointChainName,
  FAMILIES,
  formatDesiredState,
  renderPolicy,
  selectorSetName,
  type DesiredState,
  type LabelledEndpoint,
  type PolicyEndpoint,
  type PolicyInput,
} from '../../policy/render';
import type { Profile, Rule } from '../../policy/types';

function isEmptyPlan(plan: PolicyPlan): boolean {
  return plan.ipsetBefore === '' && plan.ipsetAfter === '' && FAMILIES.every((f) => plan.iptables[f] === '');
}

const allowAll: Rule = { action: 'allow', source: {}, destination: {} };

function profile(name: string, ingress: Rule[], egress: Rule[] = [allowAll]): Profile {
  return { name, labels: {}, annotations: {}, ingress, egress, labelsToApply: { [name]: '' } };
}

function sameProfile(name: string): Profile {
  return profile(name, [{ action: 'allow', source: { selector: `has(${name})` }, destination: {} }]);
}

function ep(n: number, profiles: string[], ready = true): PolicyEndpoint {
  const hex = n.toString(16).padStart(2, '0');
  return { id: hex.repeat(32), hostIf: `cali${hex.repeat(5)}a`, ipv4: [`10.65.0.${n}`], ipv6: [`fd65::${hex}`], profiles, ready };
}

function model(locals: PolicyEndpoint[], ps: Profile[], remote: LabelledEndpoint[] = []): PolicyInput {
  return {
    prefix: 'cali',
    markBit: 0x100000,
    localEndpoints: locals,
    remoteAndLocalEndpoints: [
      ...locals.map((e) => ({ ipv4: e.ipv4, ipv6: e.ipv6, labels: Object.fromEntries(e.profiles.map((p) => [p, ''])) })),
      ...remote,
    ],
    profiles: new Map(ps.map((p) => [p.name, p])),
    natOutgoingPools: ['10.65.0.0/16'],
    allPools: ['10.65.0.0/16'],
  };
}

/** Chains written (declared) in a plan, per family: "4 cali-pri-a". */
function written(plan: PolicyPlan): string[] {
  const out: string[] = [];
  for (const f of [4, 6] as const) {
    for (const line of plan.iptables[f].split('\n')) if (line.startsWith(':')) out.push(`${f} ${line.slice(1).split(' ')[0]}`);
  }
  return out.sort();
}

const base = () => model([ep(1, ['a']), ep(2, ['b'])], [sameProfile('a'), sameProfile('b')]);

test('no change: empty plan', (t) => {
  const s = renderPolicy(base());
  const plan = diffPolicy(s, renderPolicy(base()));
  t.true(isEmptyPlan(plan));
  t.deepEqual(plan.stats, { chainsWritten: 0, chainsRemoved: 0, setsWritten: 0, setsRemoved: 0, jumpsWritten: 0 });
});

test('full write from nothing: every chain, every set, the jumps', (t) => {
  const s = renderPolicy(base());
  const plan = diffPolicy(undefined, s);
  const chains4 = s.filter[4].size + s.nat[4].size;
  t.is(plan.stats.chainsWritten, chains4 + s.filter[6].size + s.nat[6].size);
  t.is(plan.stats.setsWritten, s.sets.size);
  t.is(plan.stats.jumpsWritten, 6);
  t.regex(plan.iptables[4], /^\*filter\n:cali-FORWARD - \[0:0\]\n/);
  t.regex(plan.iptables[4], /\n-I FORWARD 1 -j cali-FORWARD\n-I INPUT 1 -j cali-INPUT\nCOMMIT\n\*nat\n/);
  t.regex(plan.iptables[4], /-I POSTROUTING 1 -j cali-POSTROUTING\nCOMMIT\n$/);
  t.regex(plan.ipsetBefore, /^create cali-4-masq hash:net family inet\nadd cali-4-masq 10\.65\.0\.0\/16\n/m);
  t.is(plan.ipsetAfter, '');
  // Declarations come before the rules that reference the chains.
  const lines = plan.iptables[4].slice(0, plan.iptables[4].indexOf('COMMIT')).split('\n');
  const lastDecl = lines.map((l) => l.startsWith(':')).lastIndexOf(true);
  const firstAppend = lines.findIndex((l) => l.startsWith('-A '));
  t.true(lastDecl < firstAppend);
});

test('changing one profile rewrites only its chains and the sets whose membership changed', (t) => {
  const before = renderPolicy(base());
  const changed = model([ep(1, ['a']), ep(2, ['b'])], [
    sameProfile('a'),
    profile('b', [{ action: 'allow', protocol: 'tcp', source: { selector: 'has(a)' }, destination: { ports: [{ from: 8080, to: 8080 }] } }]),
  ]);
  const plan = diffPolicy(before, renderPolicy(changed));
  t.deepEqual(written(plan), ['4 cali-pri-b', '6 cali-pri-b']);
  t.is(plan.stats.chainsRemoved, 0);
  // has(b)'s sets are no longer used; has(a)'s already existed.
  t.deepEqual(plan.ipsetBefore, '');
  t.deepEqual(
    plan.ipsetAfter.trim().split('\n').sort(),
    [`destroy ${selectorSetName('cali', 4, 'has(b)')}`, `destroy ${selectorSetName('cali', 6, 'has(b)')}`].sort(),
  );
  t.notRegex(plan.iptables[4], /-X|-F|-I|-D/);

  // Egress only: only the egress chain.
  const egressOnly = model([ep(1, ['a']), ep(2, ['b'])], [sameProfile('a'), profile('b', [...sameProfile('b').ingress], [])]);
  t.deepEqual(written(diffPolicy(before, renderPolicy(egressOnly))), ['4 cali-pro-b', '6 cali-pro-b']);
});

test('adding an endpoint rewrites only the dispatch chains, changed sets and chains of a new profile list', (t) => {
  const before = renderPolicy(base());
  const after = renderPolicy(model([ep(1, ['a']), ep(2, ['b']), ep(3, ['a'])], [sameProfile('a'), sameProfile('b')]));
  const plan = diffPolicy(before, after);
  // Profile list [a] already has its chains: only the dispatch rules are new.
  const w = ['cali-from-wl-dispatch', 'cali-to-wl-dispatch'];
  t.deepEqual(written(plan), [...w.map((c) => `4 ${c}`), ...w.map((c) => `6 ${c}`)].sort());
  t.is(
    plan.ipsetBefore,
    `add ${selectorSetName('cali', 4, 'has(a)')} 10.65.0.3\nadd ${selectorSetName('cali', 6, 'has(a)')} fd65::3\n`,
  );
  t.is(plan.ipsetAfter, '');

  // A list no endpoint had before ([b, a]) gets its chains in the same transaction.
  const third = renderPolicy(model([ep(1, ['a']), ep(2, ['b']), ep(3, ['b', 'a'])], [sameProfile('a'), sameProfile('b')]));
  const ba = ['cali-from-wl-dispatch', endpointChainName('cali', 'fw', ['b', 'a']), 'cali-to-wl-dispatch', endpointChainName('cali', 'tw', ['b', 'a'])];
  t.deepEqual(written(diffPolicy(before, third)), [...ba.map((c) => `4 ${c}`), ...ba.map((c) => `6 ${c}`)].sort());

  // A remote endpoint joining a selector changes a set and nothing else.
  const remote = renderPolicy(model([ep(1, ['a']), ep(2, ['b'])], [sameProfile('a'), sameProfile('b')], [
    { ipv4: ['10.65.9.9'], ipv6: [], labels: { b: '' } },
  ]));
  const rp = diffPolicy(before, remote);
  t.is(rp.iptables[4], '');
  t.is(rp.iptables[6], '');
  t.is(rp.ipsetBefore, `add ${selectorSetName('cali', 4, 'has(b)')} 10.65.9.9\n`);
});

test('with a dispatch tree, adding an endpoint rewrites one leaf per direction', (t) => {
  const many = (n: number) =>
    Array.from({ length: n }, (_, i) => ({ ...ep(i + 1, ['a']), hostIf: `cali${'0123456789abcdef'[i % 16]}${String(i).padStart(10, '0')}` }));
  const before = renderPolicy(model(many(40), [sameProfile('a')]));
  const after = renderPolicy(model(many(41), [sameProfile('a')]));
  const w = ['cali-from-wl-dispatch-8', 'cali-to-wl-dispatch-8'];
  t.deepEqual(written(diffPolicy(before, after)), [...w.map((c) => `4 ${c}`), ...w.map((c) => `6 ${c}`)].sort());
  // In place (what the dataplane does): the new endpoint's dispatch rules are inserted, nothing
  // is redeclared or deleted.
  const inPlace = diffPolicy(before, after, undefined, { insertInPlace: true });
  t.deepEqual(written(inPlace), []);
  t.deepEqual(inPlace.iptables[4].split('\n').filter((l) => /^-[AIDFX] /.test(l)), [
    '-I cali-from-wl-dispatch-8 3 -s 10.65.0.41/32 -i cali80000000040 -g cali-fw-a',
    '-I cali-to-wl-dispatch-8 3 -o cali80000000040 -g cali-tw-a',
  ]);
});

test('an endpoint becoming ready is like adding it; leaving removes shared chains only with their last user, after the dispatch rewrite', (t) => {
  const ps = [sameProfile('a'), sameProfile('b')];
  const pending = renderPolicy(model([ep(1, ['a']), ep(3, ['a', 'b'], false)], ps));
  const ready = renderPolicy(model([ep(1, ['a']), ep(3, ['a', 'b'])], ps));
  const fwAB = endpointChainName('cali', 'fw', ['a', 'b']);
  const twAB = endpointChainName('cali', 'tw', ['a', 'b']);
  t.deepEqual(
    written(diffPolicy(pending, ready)).filter((c) => c.startsWith('4 ')),
    ['4 cali-from-wl-dispatch', `4 ${fwAB}`, '4 cali-pri-b', '4 cali-pro-b', '4 cali-to-wl-dispatch', `4 ${twAB}`].sort(),
  );

  // Another endpoint with the same list comes and goes: the shared chains stay.
  const two = renderPolicy(model([ep(1, ['a']), ep(3, ['a', 'b']), ep(4, ['a', 'b'])], ps));
  t.deepEqual(written(diffPolicy(ready, two)).filter((c) => c.startsWith('4 ')), ['4 cali-from-wl-dispatch', '4 cali-to-wl-dispatch']);
  const back = diffPolicy(two, ready);
  t.deepEqual(written(back).filter((c) => c.startsWith('4 ')), ['4 cali-from-wl-dispatch', '4 cali-to-wl-dispatch']);
  t.is(back.stats.chainsRemoved, 0);
  t.notRegex(back.iptables[4], /cali0404040404a|10\.65\.0\.4\//);

  // The last user leaves: its dispatch rules, the shared chains and the profile chains only it
  // used go; [a]'s chains stay for endpoint 1.
  const gone = diffPolicy(ready, renderPolicy(model([ep(1, ['a'])], ps)));
  const lines = gone.iptables[4].trim().split('\n');
  t.deepEqual(lines.filter((l) => /^-[FX] /.test(l)), [
    `-F ${fwAB}`,
    `-F ${twAB}`,
    '-F cali-pri-b',
    '-F cali-pro-b',
    `-X ${fwAB}`,
    `-X ${twAB}`,
    '-X cali-pri-b',
    '-X cali-pro-b',
  ]);
  t.false(lines.some((l) => l.includes('cali0303030303a') || l.includes('10.65.0.3/')));
  t.true(lines.indexOf(':cali-from-wl-dispatch - [0:0]') < lines.indexOf(`-F ${fwAB}`));
  t.true(lines.indexOf(':cali-to-wl-dispatch - [0:0]') < lines.indexOf(`-F ${twAB}`));
  t.is(gone.ipsetBefore, `del ${selectorSetName('cali', 4, 'has(a)')} 10.65.0.3\ndel ${selectorSetName('cali', 6, 'has(a)')} fd65::3\n`);
});

test('an endpoint whose profile list changes moves to the other shared chains', (t) => {
  const ps = [sameProfile('a'), sameProfile('b')];
  const before = renderPolicy(model([ep(1, ['a']), ep(2, ['b'])], ps));
  const after = renderPolicy(model([ep(1, ['a']), ep(2, ['a'])], ps));
  const plan = diffPolicy(before, after, undefined, { insertInPlace: true });
  t.deepEqual(written(plan).filter((c) => c.startsWith('4 ')), ['4 cali-from-wl-dispatch', '4 cali-to-wl-dispatch']);
  t.deepEqual(plan.iptables[4].split('\n').filter((l) => /^-[FX] /.test(l)), [
    '-F cali-fw-b',
    '-F cali-tw-b',
    '-F cali-pri-b',
    '-F cali-pro-b',
    '-X cali-fw-b',
    '-X cali-tw-b',
    '-X cali-pri-b',
    '-X cali-pro-b',
  ]);
  t.regex(plan.iptables[4], /\n-A cali-from-wl-dispatch -s 10\.65\.0\.2\/32 -i cali0202020202a -g cali-fw-a\n/);
});

test('removing everything: jumps deleted, chains flushed then deleted, sets destroyed after', (t) => {
  const s = renderPolicy(base());
  const plan = diffPolicy(s, emptyDesiredState('cali'));
  const v4 = plan.iptables[4];
  t.regex(v4, /^\*filter\n-D FORWARD -j cali-FORWARD\n-D INPUT -j cali-INPUT\n-F cali-FORWARD\n/);
  t.regex(v4, /\*nat\n-D POSTROUTING -j cali-POSTROUTING\n-F cali-POSTROUTING\n-X cali-POSTROUTING\nCOMMIT\n$/);
  t.is(plan.stats.chainsRemoved, s.filter[4].size + s.nat[4].size + s.filter[6].size + s.nat[6].size);
  t.is(plan.ipsetBefore, '');
  t.deepEqual(plan.ipsetAfter.trim().split('\n'), [...s.sets.keys()].map((n) => `destroy ${n}`));
  const lines = v4.slice(0, v4.indexOf('COMMIT')).split('\n');
  t.true(lines.map((l) => l.startsWith('-F ')).lastIndexOf(true) < lines.findIndex((l) => l.startsWith('-X ')));
});

test('diffs against the applied state of another prefix are refused', (t) => {
  t.throws(() => diffPolicy(renderPolicy(base()), emptyDesiredState('other')), { instanceOf: DataplaneError });
});

// ---------------------------------------------------------------------------------------------
// Against the kernel

/** What iptables-save would print after `state` was written (jumps at the top). */
function saveText(state: DesiredState, family: 4 | 6, extra: { filter?: string[]; nat?: string[] } = {}): string {
  const out: string[] = [];
  let table: 'filter' | 'nat' = 'filter';
  for (const l of formatDesiredState(state, family).split('\n')) {
    if (l.startsWith('# set')) continue;
    if (l === '*filter' || l === '*nat') {
      table = l === '*filter' ? 'filter' : 'nat';
      out.push(l, ...(table === 'filter' ? [':INPUT ACCEPT [0:0]', ':FORWARD DROP [0:0]', ':OUTPUT ACCEPT [0:0]'] : [':PREROUTING ACCEPT [0:0]', ':POSTROUTING ACCEPT [0:0]']));
    } else if (l === 'COMMIT') {
      out.push(...(extra[table] ?? []), l);
    } else {
      out.push(l);
    }
  }
  return out.join('\n');
}

function ipsetSave(state: DesiredState, extra = ''): string {
  const lines: string[] = [];
  for (const [name, s] of state.sets) {
    lines.push(`create ${name} ${s.type} family ${s.family === 4 ? 'inet' : 'inet6'} hashsize 1024 maxelem 65536 bucketsize 12 initval 0x1`);
    for (const m of s.members) lines.push(`add ${name} ${m}`);
  }
  return lines.join('\n') + '\n' + extra;
}

function snapshot(v4: string, v6: string, sets: string): KernelSnapshot {
  return { iptables: { 4: parseIptablesSave(v4), 6: parseIptablesSave(v6) }, sets: parseIpsetSave(sets) };
}

test('kernel: identical state writes nothing (restart with unchanged policy)', (t) => {
  const s = renderPolicy(base());
  const plan = diffPolicy(undefined, s, snapshot(saveText(s, 4), saveText(s, 6), ipsetSave(s, 'create docker-set hash:ip family inet\nadd docker-set 1.2.3.4\n')));
  t.true(isEmptyPlan(plan), JSON.stringify(plan, null, 1));
});

test('kernel: empty kernel gets everything and the jumps', (t) => {
  const s = renderPolicy(base());
  const plan = diffPolicy(undefined, s, snapshot('', '', ''));
  t.deepEqual(plan, diffPolicy(undefined, s));
});

test('kernel: duplicate or displaced jumps are healed to exactly one at the top', (t) => {
  const s = renderPolicy(base());
  const v4 = saveText(s, 4)
    .replace('-A FORWARD -j cali-FORWARD', '-A FORWARD -j DOCKER-USER\n-A FORWARD -j cali-FORWARD\n-A FORWARD -i eth0 -j cali-FORWARD\n-A FORWARD -j cali-FORWARD');
  const plan = diffPolicy(undefined, s, snapshot(v4, saveText(s, 6), ipsetSave(s)));
  t.is(plan.iptables[4], '*filter\n-D FORWARD -i eth0 -j cali-FORWARD\n-D FORWARD -j cali-FORWARD\n-D FORWARD -j cali-FORWARD\n-I FORWARD 1 -j cali-FORWARD\nCOMMIT\n');
  t.is(plan.iptables[6], '');
  t.is(plan.ipsetBefore, '');
});

test('kernel: stray chains, references and sets of ours are removed; others are left alone', (t) => {
  const s = renderPolicy(base());
  const v4 = saveText(s, 4, {
    filter: [
      ':cali-old-chain - [0:0]',
      ':cali-tw-caligone0000000 - [0:0]',
      ':calico-FORWARD - [0:0]',
      '-A OUTPUT -j cali-old-chain',
      '-A cali-old-chain -j cali-tw-caligone0000000',
      '-A cali-tw-caligone0000000 -m comment --comment "left over" -j DROP',
    ],
  });
  const sets = ipsetSave(s, 'create cali-4s-0000000000000000 hash:ip family inet\nadd cali-4s-0000000000000000 10.0.0.1\ncreate calico-4x hash:ip family inet\n');
  const plan = diffPolicy(undefined, s, snapshot(v4, saveText(s, 6), sets));
  t.is(
    plan.iptables[4],
    '*filter\n-D OUTPUT -j cali-old-chain\n-F cali-old-chain\n-F cali-tw-caligone0000000\n-X cali-old-chain\n-X cali-tw-caligone0000000\nCOMMIT\n',
  );
  t.is(plan.ipsetAfter, 'destroy cali-4s-0000000000000000\n');
  t.deepEqual(plan.stats, { chainsWritten: 0, chainsRemoved: 2, setsWritten: 0, setsRemoved: 1, jumpsWritten: 1 });
});

test('kernel: tampered chains are rewritten, tampered sets repaired member by member', (t) => {
  const s = renderPolicy(base());
  const setA = selectorSetName('cali', 4, 'has(a)');
  const v4 = saveText(s, 4).replace('-A cali-pri-a -m set', '-A cali-pri-a -j ACCEPT\n-A cali-pri-a -m set');
  const sets = ipsetSave(s).replace(`add ${setA} 10.65.0.1\n`, `add ${setA} 10.99.0.1\n`);
  const plan = diffPolicy(undefined, s, snapshot(v4, saveText(s, 6), sets));
  t.deepEqual(written(plan), ['4 cali-pri-a']);
  t.is(plan.ipsetBefore, `add ${setA} 10.65.0.1\ndel ${setA} 10.99.0.1\n`);
});

test('kernel: per-interface endpoint chains of the earlier layout are replaced by shared ones', (t) => {
  const s = renderPolicy(base());
  // What the layout before shared chains left: dispatch to <p>-fw-<if> / <p>-tw-<if>.
  const old = (text: string): string =>
    text
      .replace(/-g cali-fw-a\n/, '-g cali-fw-cali0101010101a\n')
      .replace(/-g cali-tw-a\n/, '-g cali-tw-cali0101010101a\n')
      .replace('COMMIT', [
        ':cali-fw-cali0101010101a - [0:0]',
        ':cali-tw-cali0101010101a - [0:0]',
        '-A cali-fw-cali0101010101a -j MARK --set-xmark 0x0/0x100000',
        '-A cali-fw-cali0101010101a -j cali-pro-a',
        '-A cali-fw-cali0101010101a -m mark --mark 0x100000/0x100000 -j RETURN',
        '-A cali-fw-cali0101010101a -m comment --comment "no profile allowed this egress" -j DROP',
        '-A cali-tw-cali0101010101a -j MARK --set-xmark 0x0/0x100000',
        '-A cali-tw-cali0101010101a -j cali-pri-a',
        '-A cali-tw-cali0101010101a -m mark --mark 0x100000/0x100000 -j RETURN',
        '-A cali-tw-cali0101010101a -m comment --comment "no profile allowed this ingress" -j DROP',
        'COMMIT',
      ].join('\n'))
      .replace(/^:cali-fw-a - \[0:0\]\n/m, '')
      .replace(/^:cali-tw-a - \[0:0\]\n/m, '')
      .replace(/^-A cali-[ft]w-a .*\n/gm, '');
  const v4 = old(saveText(s, 4));
  t.true(v4.includes('-g cali-fw-cali0101010101a\n') && !v4.includes('cali-fw-a'), v4);
  const plan = diffPolicy(undefined, s, snapshot(v4, saveText(s, 6), ipsetSave(s)), { insertInPlace: true });
  t.deepEqual(written(plan), ['4 cali-from-wl-dispatch', '4 cali-fw-a', '4 cali-to-wl-dispatch', '4 cali-tw-a']);
  const lines = plan.iptables[4].trim().split('\n');
  t.deepEqual(lines.filter((l) => /^-[FXD] /.test(l)), [
    '-F cali-fw-cali0101010101a',
    '-F cali-tw-cali0101010101a',
    '-X cali-fw-cali0101010101a',
    '-X cali-tw-cali0101010101a',
  ]);
  // One transaction: the new chains are filled and the dispatch chains refilled before the old
  // chains go.
  t.true(lines.indexOf('-A cali-fw-a -m comment --comment "no profile allowed this egress" -j DROP') < lines.indexOf('-F cali-fw-cali0101010101a'));
  t.is(lines.filter((l) => l === 'COMMIT').length, 1);
});

test('kernel: a set of ours with the wrong type is refused with a clear error', (t) => {
  const s = renderPolicy(base());
  const setA = selectorSetName('cali', 4, 'has(a)');
  const sets = ipsetSave(s).replace(`create ${setA} hash:ip`, `create ${setA} hash:net`);
  const err = t.throws(() => diffPolicy(undefined, s, snapshot(saveText(s, 4), saveText(s, 6), sets)), { instanceOf: DataplaneError });
  t.regex(err?.message ?? '', new RegExp(`ipset ${setA} exists as hash:net family inet, but policy needs hash:ip`));
});

test('parseIpsetSave: members in render\'s canonical spelling', (t) => {
  const sets = parseIpsetSave(
    'create x hash:net family inet6 hashsize 1024\nadd x FD65:0::1\nadd x fd65::/64\nadd x fd65::2/128\ncreate y hash:ip family inet\nadd y 10.0.0.2\nadd y 10.0.0.1\ncreate z list:set size 8\n',
    (n) => n !== 'z',
  );
  t.deepEqual(sets.get('x'), { type: 'hash:net', family: 6, members: ['fd65::/64', 'fd65::1', 'fd65::2'] });
  t.deepEqual(sets.get('y'), { type: 'hash:ip', family: 4, members: ['10.0.0.1', '10.0.0.2'] });
  t.false(sets.has('z'));
});

test('parseIptablesSave: tables, chains without rules, rule specs verbatim', (t) => {
  const dump = parseIptablesSave(
    '# Generated by iptables-save\n*filter\n:INPUT ACCEPT [0:0]\n:cali-x - [0:0]\n-A INPUT -m comment --comment "a b" -j cali-x\nCOMMIT\n*nat\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n',
  );
  t.deepEqual([...(dump.get('filter')?.entries() ?? [])], [['INPUT', ['-m comment --comment "a b" -j cali-x']], ['cali-x', []]]);
  t.deepEqual([...(dump.get('nat')?.keys() ?? [])], ['POSTROUTING']);
});
