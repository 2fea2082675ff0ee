import test from 'ava';
import { InvalidRequestError } from '../../lib/errors';
import { effectiveLabels, explainPacket, type EndpointDescription, type Packet } from '../../policy/evaluate';
import { parseProfileResource } from '../../policy/profile-resource';
import type { Profile } from '../../policy/types';

// Endpoint A (10.0.0.1, fd00::1) sends to endpoint B (10.0.0.2, fd00::2). A's profile 'pa' allows
// all egress unless a row says otherwise; B's profile 'pb' has the row's ingress rules.
const A: EndpointDescription = { ips: ['10.0.0.1', 'fd00::1'], labels: { role: 'frontend', app: 'web' }, profiles: ['pa'] };
const B: EndpointDescription = { ips: ['10.0.0.2', 'fd00::2'], labels: { role: 'db' }, profiles: ['pb'] };
const TCP: Packet = { protocol: 'tcp', srcIp: '10.0.0.1', dstIp: '10.0.0.2', srcPort: 40000, dstPort: 8080 };
const V6 = { srcIp: 'fd00::1', dstIp: 'fd00::2' };
const PING: Partial<Packet> = { protocol: 'icmp', srcPort: undefined, dstPort: undefined };

type Rules = unknown[];
interface Row {
  readonly name: string;
  readonly ingress?: Rules;
  readonly egress?: Rules;
  /** Extra profiles by name (each with ingress and egress rules). */
  readonly profiles?: Record<string, { ingress?: Rules; egress?: Rules }>;
  readonly src?: EndpointDescription | 'host';
  readonly dst?: EndpointDescription | 'host';
  readonly packet?: Partial<Packet>;
  readonly allowed: boolean;
  readonly egressReason?: string;
  readonly ingressReason: string;
  readonly logged?: string[];
}

const allowedIn = (i: number, p = 'pb') => `allowed by profile '${p}', spec.ingress[${i}]`;
const deniedIn = (i: number, p = 'pb') => `denied by profile '${p}', spec.ingress[${i}]`;
const NO_MATCH = 'dropped: no rule matched in profiles [pb]';
const EGRESS_OK = "allowed by profile 'pa', spec.egress[0]";
const NOT_REACHED = 'not reached: the packet was dropped on egress';
const NOT_CHECKED = 'not a workload endpoint: not checked';

const rows: Row[] = [
  // Ordering
  { name: 'allow all', ingress: [{ action: 'Allow' }], allowed: true, ingressReason: allowedIn(0) },
  { name: 'no rules: drop', ingress: [], allowed: false, ingressReason: NO_MATCH },
  { name: 'first matching deny wins over a later allow', ingress: [{ action: 'Deny' }, { action: 'Allow' }], allowed: false, ingressReason: deniedIn(0) },
  { name: 'first matching allow wins over a later deny', ingress: [{ action: 'Allow' }, { action: 'Deny' }], allowed: true, ingressReason: allowedIn(0) },
  { name: 'a non-matching deny is skipped', ingress: [{ action: 'Deny', protocol: 'UDP' }, { action: 'Allow' }], allowed: true, ingressReason: allowedIn(1) },
  { name: 'log continues', ingress: [{ action: 'Log' }, { action: 'Log', protocol: 'UDP' }, { action: 'Log' }, { action: 'Allow' }], allowed: true, ingressReason: allowedIn(3), logged: ['pb ingress 0', 'pb ingress 2'] },
  { name: 'log alone does not allow', ingress: [{ action: 'Log' }], allowed: false, ingressReason: NO_MATCH, logged: ['pb ingress 0'] },

  // Multiple profiles
  { name: 'no match in the first profile: the next decides', dst: { ...B, profiles: ['p1', 'pb'] }, profiles: { p1: { ingress: [{ action: 'Deny', protocol: 'UDP' }] } }, ingress: [{ action: 'Allow' }], allowed: true, ingressReason: allowedIn(0) },
  { name: 'a deny in the first profile ends evaluation', dst: { ...B, profiles: ['p1', 'pb'] }, profiles: { p1: { ingress: [{ action: 'Deny' }] } }, ingress: [{ action: 'Allow' }], allowed: false, ingressReason: deniedIn(0, 'p1') },
  { name: 'an allow in the first profile ends evaluation', dst: { ...B, profiles: ['p1', 'pb'] }, profiles: { p1: { ingress: [{ action: 'Allow' }] } }, ingress: [{ action: 'Deny' }], allowed: true, ingressReason: allowedIn(0, 'p1') },
  { name: 'no match in any profile', dst: { ...B, profiles: ['p1', 'pb'] }, profiles: { p1: { ingress: [] } }, ingress: [{ action: 'Allow', protocol: 'UDP' }], allowed: false, ingressReason: 'dropped: no rule matched in profiles [p1, pb]' },
  { name: 'a missing profile has no rules', dst: { ...B, profiles: ['gone', 'pb'] }, ingress: [{ action: 'Allow' }], allowed: true, ingressReason: allowedIn(0) },
  { name: 'only a missing profile: drop', dst: { ...B, profiles: ['gone'] }, allowed: false, ingressReason: 'dropped: no rule matched in profiles [gone (does not exist)]' },
  { name: 'destination without profiles drops', dst: { ...B, profiles: [] }, allowed: false, ingressReason: 'dropped: the endpoint has no profiles' },
  { name: 'source without profiles drops on egress', src: { ...A, profiles: [] }, ingress: [{ action: 'Allow' }], allowed: false, egressReason: 'dropped: the endpoint has no profiles', ingressReason: NOT_REACHED },

  // Direction: egress first, ingress only if egress passed; non-endpoints are not checked
  { name: 'egress deny: ingress not reached', egress: [{ action: 'Deny', destination: { nets: ['10.0.0.2/32'] } }, { action: 'Allow' }], ingress: [{ action: 'Allow' }], allowed: false, egressReason: "denied by profile 'pa', spec.egress[0]", ingressReason: NOT_REACHED },
  { name: 'egress rules see the sender as the source', egress: [{ action: 'Allow', source: { selector: "app == 'web'" } }], ingress: [{ action: 'Allow' }], allowed: true, egressReason: EGRESS_OK, ingressReason: allowedIn(0) },
  { name: 'from the host: egress not checked, ingress is', src: 'host', packet: { srcIp: '10.0.0.254' }, ingress: [{ action: 'Allow', source: { nets: ['10.0.0.254/32'] } }], allowed: true, egressReason: NOT_CHECKED, ingressReason: allowedIn(0) },
  { name: 'to the host: ingress not checked', dst: 'host', packet: { dstIp: '10.0.0.254' }, allowed: true, ingressReason: NOT_CHECKED },
  { name: 'to the host: egress still applies', dst: 'host', packet: { dstIp: '10.0.0.254' }, egress: [{ action: 'Deny', destination: { notSelector: 'all()' } }], allowed: false, egressReason: "denied by profile 'pa', spec.egress[0]", ingressReason: NOT_REACHED },

  // Protocols: names and numbers are the same protocol
  { name: 'protocol 6 matches a tcp packet', ingress: [{ action: 'Allow', protocol: 6 }], allowed: true, ingressReason: allowedIn(0) },
  { name: 'protocol TCP matches a packet of protocol 6', packet: { protocol: 6 }, ingress: [{ action: 'Allow', protocol: 'TCP' }], allowed: true, ingressReason: allowedIn(0) },
  { name: 'protocol 17 does not match tcp', ingress: [{ action: 'Allow', protocol: 17 }], allowed: false, ingressReason: NO_MATCH },
  { name: 'sctp by number', packet: { protocol: 132 }, ingress: [{ action: 'Allow', protocol: 'SCTP', destination: { ports: [8080] } }], allowed: true, ingressReason: allowedIn(0) },
  { name: 'any other protocol number', packet: { protocol: 47, srcPort: undefined, dstPort: undefined }, ingress: [{ action: 'Allow', protocol: 47 }], allowed: true, ingressReason: allowedIn(0) },

  // Ports
  { name: 'destination port matches', ingress: [{ action: 'Allow', protocol: 'TCP', destination: { ports: [8080] } }], allowed: true, ingressReason: allowedIn(0) },
  { name: 'destination port differs', packet: { dstPort: 8081 }, ingress: [{ action: 'Allow', protocol: 'TCP', destination: { ports: [8080] } }], allowed: false, ingressReason: NO_MATCH },
  { name: 'port rule with another protocol', packet: { protocol: 'udp' }, ingress: [{ action: 'Allow', protocol: 'TCP', destination: { ports: [8080] } }], allowed: false, ingressReason: NO_MATCH },
  { name: 'range: upper bound included', packet: { dstPort: 8100 }, ingress: [{ action: 'Allow', protocol: 'TCP', destination: { ports: ['8000:8100'] } }], allowed: true, ingressReason: allowedIn(0) },
  { name: 'range: one past the end', packet: { dstPort: 8101 }, ingress: [{ action: 'Allow', protocol: 'TCP', destination: { ports: ['8000:8100'] } }], allowed: false, ingressReason: NO_MATCH },
  { name: 'any of several ports', packet: { dstPort: 443 }, ingress: [{ action: 'Allow', protocol: 'TCP', destination: { ports: [80, 443, '8000:9000'] } }], allowed: true, ingressReason: allowedIn(0) },
  { name: 'notPorts excludes', packet: { dstPort: 22 }, ingress: [{ action: 'Allow', protocol: 'TCP', destination: { notPorts: ['20:23'] } }], allowed: false, ingressReason: NO_MATCH },
  { name: 'notPorts lets others through', ingress: [{ action: 'Allow', protocol: 'TCP', destination: { notPorts: ['20:23'] } }], allowed: true, ingressReason: allowedIn(0) },
  { name: 'source ports apply to the source port', ingress: [{ action: 'Allow', protocol: 'TCP', source: { ports: ['32768:60999'] } }], allowed: true, ingressReason: allowedIn(0) },
  { name: 'unknown port matches no ports', packet: { dstPort: undefined }, ingress: [{ action: 'Allow', protocol: 'TCP', destination: { ports: [8080] } }], allowed: false, ingressReason: NO_MATCH },
  { name: 'unknown port satisfies notPorts', packet: { dstPort: undefined }, ingress: [{ action: 'Allow', protocol: 'TCP', destination: { notPorts: [8080] } }], allowed: true, ingressReason: allowedIn(0) },

  // Selectors
  { name: 'selector matches the sender', ingress: [{ action: 'Allow', source: { selector: "role == 'frontend'" } }], allowed: true, ingressReason: allowedIn(0) },
  { name: 'selector does not match the sender', src: { ...A, labels: { role: 'other' } }, ingress: [{ action: 'Allow', source: { selector: "role == 'frontend'" } }], allowed: false, ingressReason: NO_MATCH },
  { name: 'selector never matches a non-endpoint', src: 'host', packet: { srcIp: '10.0.0.254' }, ingress: [{ action: 'Allow', source: { selector: 'all()' } }], allowed: false, egressReason: NOT_CHECKED, ingressReason: NO_MATCH },
  { name: 'notSelector excludes a matching sender', ingress: [{ action: 'Allow', source: { notSelector: 'has(app)' } }], allowed: false, ingressReason: NO_MATCH },
  { name: 'notSelector admits a non-endpoint', src: 'host', packet: { srcIp: '10.0.0.254' }, ingress: [{ action: 'Allow', source: { notSelector: 'all()' } }], allowed: true, egressReason: NOT_CHECKED, ingressReason: allowedIn(0) },
  { name: 'destination selector matches the receiver', ingress: [{ action: 'Allow', destination: { selector: "role in {'db', 'cache'}" } }], allowed: true, ingressReason: allowedIn(0) },
  { name: 'default profile: same-network peers only', src: { ...A, labels: { net1: '' } }, ingress: [{ action: 'Allow', source: { selector: 'has(net1)' } }], allowed: true, ingressReason: allowedIn(0) },
  { name: 'default profile: other networks are dropped', src: { ...A, labels: { net2: '' } }, ingress: [{ action: 'Allow', source: { selector: 'has(net1)' } }], allowed: false, ingressReason: NO_MATCH },

  // Nets, and IPv4 versus IPv6
  { name: 'source inside nets', ingress: [{ action: 'Allow', source: { nets: ['10.0.0.0/24'] } }], allowed: true, ingressReason: allowedIn(0) },
  { name: 'source outside nets', ingress: [{ action: 'Allow', source: { nets: ['10.1.0.0/16', '192.168.0.0/16'] } }], allowed: false, ingressReason: NO_MATCH },
  { name: 'notNets excludes', ingress: [{ action: 'Allow', source: { notNets: ['10.0.0.0/24'] } }], allowed: false, ingressReason: NO_MATCH },
  { name: 'notNets admits others', ingress: [{ action: 'Allow', source: { notNets: ['10.1.0.0/16'] } }], allowed: true, ingressReason: allowedIn(0) },
  { name: 'destination nets', ingress: [{ action: 'Allow', destination: { nets: ['10.0.0.2'] } }], allowed: true, ingressReason: allowedIn(0) },
  { name: 'IPv6 packet, IPv4-only nets: rule never matches', packet: V6, ingress: [{ action: 'Allow', source: { nets: ['0.0.0.0/0'] } }], allowed: false, ingressReason: NO_MATCH },
  { name: 'IPv6 packet, IPv4-only notNets: rule never matches', packet: V6, ingress: [{ action: 'Allow', source: { notNets: ['10.9.0.0/16'] } }], allowed: false, ingressReason: NO_MATCH },
  { name: 'IPv6 packet, mixed nets: the IPv6 CIDR matches', packet: V6, ingress: [{ action: 'Allow', source: { nets: ['10.0.0.0/8', 'fd00::/64'] } }], allowed: true, ingressReason: allowedIn(0) },
  { name: 'IPv4 packet, mixed nets: the IPv4 CIDR matches', ingress: [{ action: 'Allow', source: { nets: ['fd00::/64', '10.0.0.0/8'] } }], allowed: true, ingressReason: allowedIn(0) },
  { name: 'IPv6 selector match uses the endpoint IPv6 address', packet: V6, ingress: [{ action: 'Allow', source: { selector: "role == 'frontend'" } }], allowed: true, ingressReason: allowedIn(0) },

  // ICMP
  { name: 'ping matches icmp type 8', packet: PING, ingress: [{ action: 'Allow', protocol: 'ICMP', icmp: { type: 8 } }], allowed: true, ingressReason: allowedIn(0) },
  { name: 'type and code both match', packet: { ...PING, icmpType: 3, icmpCode: 4 }, ingress: [{ action: 'Allow', protocol: 'ICMP', icmp: { type: 3, code: 4 } }], allowed: true, ingressReason: allowedIn(0) },
  { name: 'code differs', packet: { ...PING, icmpType: 3, icmpCode: 1 }, ingress: [{ action: 'Allow', protocol: 'ICMP', icmp: { type: 3, code: 4 } }], allowed: false, ingressReason: NO_MATCH },
  { name: 'type differs', packet: { ...PING, icmpType: 0 }, ingress: [{ action: 'Allow', protocol: 'ICMP', icmp: { type: 8 } }], allowed: false, ingressReason: NO_MATCH },
  { name: 'notICMP excludes ping', packet: PING, ingress: [{ action: 'Allow', protocol: 'ICMP', notICMP: { type: 8 } }], allowed: false, ingressReason: NO_MATCH },
  { name: 'notICMP admits other types', packet: { ...PING, icmpType: 0 }, ingress: [{ action: 'Allow', protocol: 1, notICMP: { type: 8 } }], allowed: true, ingressReason: allowedIn(0) },
  { name: 'ICMPv6 echo by default', packet: { ...PING, ...V6, protocol: 'icmpv6' }, ingress: [{ action: 'Allow', protocol: 58, icmp: { type: 128, code: 0 } }], allowed: true, ingressReason: allowedIn(0) },
  { name: 'an ICMP rule does not match ICMPv6', packet: { ...PING, ...V6, protocol: 'icmpv6' }, ingress: [{ action: 'Allow', protocol: 'ICMP' }], allowed: false, ingressReason: NO_MATCH },
  { name: 'a TCP rule does not match ping', packet: PING, ingress: [{ action: 'Allow', protocol: 'TCP' }], allowed: false, ingressReason: NO_MATCH },

  // Everything together
  {
    name: 'all criteria of one rule must hold',
    ingress: [
      { action: 'Allow', protocol: 'TCP', source: { selector: "role == 'frontend'", nets: ['10.0.0.0/24'] }, destination: { ports: [9999] } },
      { action: 'Allow', protocol: 'TCP', source: { selector: "role == 'frontend'", nets: ['10.0.0.0/24'] }, destination: { ports: [8080], notNets: ['10.0.0.2/32'] } },
      { action: 'Allow', protocol: 'TCP', source: { selector: "role == 'frontend'", nets: ['10.0.0.0/24'] }, destination: { ports: [8080], selector: 'has(role)' } },
    ],
    allowed: true,
    ingressReason: allowedIn(2),
  },
];

function lookupFor(row: Row): (name: string) => Profile | undefined {
  const specs: Record<string, { ingress?: Rules; egress?: Rules }> = {
    pa: { egress: row.egress ?? [{ action: 'Allow' }] },
    pb: { ingress: row.ingress ?? [] },
    ...row.profiles,
  };
  const profiles = new Map<string, Profile>();
  for (const [name, spec] of Object.entries(specs)) profiles.set(name, parseProfileResource({ kind: 'Profile', metadata: { name }, spec }));
  return (name) => profiles.get(name);
}

for (const row of rows) {
  test(`explain: ${row.name}`, (t) => {
    const packet = { ...TCP, ...row.packet };
    const src = row.src === 'host' ? undefined : (row.src ?? A);
    const dst = row.dst === 'host' ? undefined : (row.dst ?? B);
    const result = explainPacket(packet, src, dst, lookupFor(row));
    t.is(result.allowed, row.allowed);
    t.is(result.egress.reason, row.egressReason ?? EGRESS_OK);
    t.is(result.ingress.reason, row.ingressReason);
    const logged = [...result.egress.logged, ...result.ingress.logged].map((r) => `${r.profile} ${r.direction} ${r.index}`);
    t.deepEqual(logged, row.logged ?? []);
  });
}

test('the deciding rule is reported structurally', (t) => {
  const lookup = lookupFor({ name: '', ingress: [{ action: 'Log' }, { action: 'Deny', protocol: 'TCP' }], allowed: false, ingressReason: '' });
  const result = explainPacket(TCP, A, B, lookup);
  t.deepEqual(result.egress, { verdict: 'allowed', allowed: true, rule: { profile: 'pa', direction: 'egress', index: 0, action: 'allow' }, logged: [], reason: EGRESS_OK });
  t.deepEqual(result.ingress, {
    verdict: 'denied',
    allowed: false,
    rule: { profile: 'pb', direction: 'ingress', index: 1, action: 'deny' },
    logged: [{ profile: 'pb', direction: 'ingress', index: 0, action: 'log' }],
    reason: deniedIn(1),
  });
});

const badPackets: [string, Partial<Packet>, string][] = [
  ['source not owned by the source endpoint', { srcIp: '10.0.0.9' }, 'packet source address 10.0.0.9 is not an address of the source endpoint (10.0.0.1, fd00::1)'],
  ['destination not owned', { dstIp: 'fd00::9', srcIp: 'fd00::1' }, 'packet destination address fd00::9 is not an address of the destination endpoint (10.0.0.2, fd00::2)'],
  ['mixed families', { dstIp: 'fd00::2' }, 'packet source 10.0.0.1 and destination fd00::2 are of different IP families'],
  ['not an address', { srcIp: 'host-a' }, 'packet source "host-a" is not an IP address'],
  ['ICMP over IPv6', { ...V6, protocol: 'icmp' }, 'packet protocol icmp does not go with IPv6 addresses: use ICMP for IPv4 and ICMPv6 for IPv6'],
  ['ICMPv6 over IPv4', { protocol: 58 }, 'packet protocol 58 does not go with IPv4 addresses: use ICMP for IPv4 and ICMPv6 for IPv6'],
  ['port out of range', { dstPort: 70000 }, 'packet destination port must be an integer from 0 to 65535, got 70000'],
  ['protocol 0', { protocol: 0 }, 'packet protocol must be a name or a number from 1 to 255, got 0'],
];

for (const [name, packet, message] of badPackets) {
  test(`refuses an impossible packet: ${name}`, (t) => {
    const err = t.throws(() => explainPacket({ ...TCP, ...packet }, A, B, () => undefined), { instanceOf: InvalidRequestError });
    t.is(err?.message, message);
  });
}

test('effectiveLabels: endpoint labels win, then the earlier profile', (t) => {
  const cases: [Record<string, string>[], Record<string, string>, Record<string, string>][] = [
    [[], {}, {}],
    [[{ net1: '' }], {}, { net1: '' }],
    [[{ net1: '' }, { net2: '' }], { role: 'db' }, { net1: '', net2: '', role: 'db' }],
    [[{ tier: 'a' }, { tier: 'b' }], {}, { tier: 'a' }],
    [[{ tier: 'a' }], { tier: 'c' }, { tier: 'c' }],
  ];
  for (const [profiles, endpoint, expected] of cases) t.deepEqual(effectiveLabels(profiles, endpoint), expected);
});
