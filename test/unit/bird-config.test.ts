import test from 'ava';
import { type BirdInput, BgpConfigError, parseProtocolName, protocolName, renderBirdConfig } from '../../bgp/bird-config';

const timers = { keepaliveSeconds: 2, holdSeconds: 6, connectRetrySeconds: 1 };
const base: BirdInput = {
  hostAddress: '198.18.1.11/24',
  asNumber: 64512,
  exports: ['198.19.0.0/26', '198.19.3.7/32'],
  peers: [],
  timers,
};

/** The body of one `protocol bgp <name> ... { ... }` block. */
function session(text: string, name: string): string | undefined {
  const m = new RegExp(`protocol bgp ${name} from calico_peer \\{\\n([\\s\\S]*?)\\n\\}\\n`).exec(text);
  return m?.[1] === undefined ? undefined : `${m[1]}\n`;
}

test('router id, local AS, timers and the export filter come from the input', (t) => {
  const text = renderBirdConfig(base);
  t.regex(text, /^router id 198\.18\.1\.11;$/m);
  t.regex(text, /^ {2}local 198\.18\.1\.11 as 64512;$/m);
  t.regex(text, /hold time 6;\n {2}keepalive time 2;\n {2}connect retry time 1;/);
  // Only our static routes are announced; only BGP routes reach the kernel.
  t.regex(text, /export where proto = "calico_exports";/);
  t.regex(text, /export where source = RTS_BGP;/);
  t.regex(text, /protocol static calico_exports \{\n {2}ipv4;\n {2}route 198\.19\.0\.0\/26 blackhole;\n {2}route 198\.19\.3\.7\/32 blackhole;\n\}/);
});

test('mesh peers: iBGP, direct on the same subnet, multihop across subnets, never itself', (t) => {
  const text = renderBirdConfig({
    ...base,
    peers: [
      { kind: 'mesh', address: '198.18.1.12', asNumber: 64512 },
      { kind: 'mesh', address: '198.18.2.11', asNumber: 64512 },
      { kind: 'mesh', address: '198.18.1.11', asNumber: 64512 },
    ],
  });
  t.is(session(text, 'mesh_198_18_1_12'), '  neighbor 198.18.1.12 as 64512;\n  direct;\n');
  t.is(session(text, 'mesh_198_18_2_11'), '  neighbor 198.18.2.11 as 64512;\n  multihop;\n');
  t.is(session(text, 'mesh_198_18_1_11'), undefined);
});

test('a global eBGP peer accepts paths holding our own AS once (hosts sharing an AS behind a router)', (t) => {
  const text = renderBirdConfig({ ...base, peers: [{ kind: 'global', address: '198.18.1.1', asNumber: 65000 }] });
  t.is(session(text, 'global_198_18_1_1'), '  neighbor 198.18.1.1 as 65000;\n  direct;\n  allow local as 1;\n');
});

test('a node-specific peer and an AS override', (t) => {
  const text = renderBirdConfig({ ...base, asNumber: 64600, peers: [{ kind: 'node', address: '198.18.1.1', asNumber: 65000 }] });
  t.regex(text, /local 198\.18\.1\.11 as 64600;/);
  t.truthy(session(text, 'node_198_18_1_1'));
});

test('a route reflector marks its clients with its cluster ID; sessions to other reflectors are plain', (t) => {
  const text = renderBirdConfig({
    ...base,
    routeReflectorClusterId: '1.0.0.1',
    peers: [
      { kind: 'rr', address: '198.18.1.12', asNumber: 64512, rrClient: true },
      { kind: 'rr', address: '198.18.1.13', asNumber: 64512 },
    ],
  });
  t.is(session(text, 'rr_198_18_1_12'), '  neighbor 198.18.1.12 as 64512;\n  direct;\n  rr client;\n  rr cluster id 1.0.0.1;\n  ipv4 { export where proto = "calico_exports" || source = RTS_BGP; };\n');
  t.is(session(text, 'rr_198_18_1_13'), '  neighbor 198.18.1.13 as 64512;\n  direct;\n  ipv4 { export where proto = "calico_exports" || source = RTS_BGP; };\n');
});

test('the same input renders the same text (reloads only on change)', (t) => {
  const peers = [{ kind: 'mesh' as const, address: '198.18.1.13', asNumber: 64512 }, { kind: 'mesh' as const, address: '198.18.1.12', asNumber: 64512 }];
  t.is(renderBirdConfig({ ...base, peers }), renderBirdConfig({ ...base, peers: [...peers].reverse(), exports: [...base.exports].reverse() }));
});

const hostile: [string, Partial<BirdInput>][] = [
  ['peer address with a brace', { peers: [{ kind: 'global', address: '1.2.3.4; } protocol bgp x {', asNumber: 65000 }] }],
  ['peer address with a quote', { peers: [{ kind: 'global', address: '1.2.3.4"', asNumber: 65000 }] }],
  ['peer address with a newline', { peers: [{ kind: 'global', address: '1.2.3.4\nprotocol', asNumber: 65000 }] }],
  ['IPv6 peer', { peers: [{ kind: 'global', address: 'fd00::1', asNumber: 65000 }] }],
  ['multicast peer', { peers: [{ kind: 'global', address: '224.0.0.5', asNumber: 65000 }] }],
  ['AS 0', { peers: [{ kind: 'global', address: '198.18.1.1', asNumber: 0 }] }],
  ['AS beyond 32 bits', { peers: [{ kind: 'global', address: '198.18.1.1', asNumber: 4_294_967_296 }] }],
  ['fractional AS', { peers: [{ kind: 'global', address: '198.18.1.1', asNumber: 65000.5 }] }],
  ['own AS out of range', { asNumber: -1 }],
  ['host address with a brace', { hostAddress: '198.18.1.11}/24' }],
  ['cluster ID that is not an address', { routeReflectorClusterId: '1.0.0.1; rr client' }],
  ['exported route with text', { exports: ['198.19.0.0/26 blackhole; }'] }],
  ['log file with a quote', { logFile: '/run/x"; include "/etc/passwd' }],
  ['keepalive not shorter than hold', { timers: { keepaliveSeconds: 6, holdSeconds: 6, connectRetrySeconds: 1 } }],
];
for (const [what, change] of hostile) {
  test(`refused before rendering: ${what}`, (t) => {
    const err = t.throws(() => renderBirdConfig({ ...base, ...change }));
    t.true(err instanceof BgpConfigError || err?.name === 'InvalidRequestError', String(err));
  });
}

test('protocol names stand for kind and address, both ways', (t) => {
  t.is(protocolName('global', '198.18.1.1'), 'global_198_18_1_1');
  t.deepEqual(parseProtocolName('node_10_0_0_1'), { kind: 'node', address: '10.0.0.1' });
  t.is(parseProtocolName('calico_kernel'), undefined);
  t.is(parseProtocolName('mesh_1_2_3'), undefined);
});
