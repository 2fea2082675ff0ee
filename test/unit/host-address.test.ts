import test from 'ava';
import {
  type InterfaceAddresses,
  chooseHostAddress,
  completeHostAddress,
  parseHostAddressSetting,
} from '../../config/host-address';
import { ConfigError } from '../../lib/errors';

test('IP / IP6 settings: defaults, addresses, none, methods', (t) => {
  t.deepEqual(parseHostAddressSetting({}, 4), { kind: 'autodetect', method: { kind: 'first-found' } });
  t.deepEqual(parseHostAddressSetting({}, 6), { kind: 'none' });
  t.deepEqual(parseHostAddressSetting({ IP: '198.18.1.5' }, 4), { kind: 'address', address: '198.18.1.5' });
  t.deepEqual(parseHostAddressSetting({ IP: '198.18.1.5/24' }, 4), { kind: 'address', address: '198.18.1.5', prefix: 24 });
  t.deepEqual(parseHostAddressSetting({ IP6: 'fd00::5/64' }, 6), { kind: 'address', address: 'fd00::5', prefix: 64 });
  t.deepEqual(parseHostAddressSetting({ IP: 'None' }, 4), { kind: 'none' });
  t.deepEqual(parseHostAddressSetting({ IP6: 'autodetect', IP6_AUTODETECTION_METHOD: 'can-reach=fd00::1' }, 6), {
    kind: 'autodetect',
    method: { kind: 'can-reach', destination: 'fd00::1' },
  });
  const m = parseHostAddressSetting({ IP_AUTODETECTION_METHOD: 'interface=^eth[0-9]+$' }, 4);
  t.true(m.kind === 'autodetect' && m.method.kind === 'interface' && m.method.pattern.test('eth12'));
});

const bad: Array<[string, Record<string, string>, 4 | 6, RegExp]> = [
  ['IPv6 address for IP', { IP: 'fd00::1' }, 4, /^IP must be an IPv4 address/],
  ['prefix too long', { IP: '198.18.0.1/33' }, 4, /^IP must be/],
  ['not an address', { IP: 'eth0' }, 4, /^IP must be/],
  ['unknown method', { IP_AUTODETECTION_METHOD: 'cidr=10.0.0.0/8' }, 4, /^IP_AUTODETECTION_METHOD must be first-found/],
  ['bad regex', { IP_AUTODETECTION_METHOD: 'interface=(' }, 4, /needs a valid regular expression/],
  ['empty regex', { IP_AUTODETECTION_METHOD: 'interface=' }, 4, /needs a valid regular expression/],
  ['can-reach of a name', { IP6: 'autodetect', IP6_AUTODETECTION_METHOD: 'can-reach=example.com' }, 6, /needs an IP address/],
];
for (const [what, env, family, message] of bad) {
  test(`IP settings refused: ${what}`, (t) => {
    t.throws(() => parseHostAddressSetting(env, family), { instanceOf: ConfigError, message });
  });
}

const ifs: InterfaceAddresses[] = [
  { name: 'lo', up: true, addresses: [{ address: '127.0.0.1', prefix: 8, scope: 'host' }] },
  { name: 'docker0', up: true, addresses: [{ address: '172.17.0.1', prefix: 16, scope: 'global' }] },
  { name: 'cali0123456789a', up: true, addresses: [{ address: '169.254.1.1', prefix: 32, scope: 'global' }] },
  { name: 'eth0', up: false, addresses: [{ address: '198.18.9.9', prefix: 24, scope: 'global' }] },
  { name: 'ens3', up: true, addresses: [{ address: 'fe80::1', prefix: 64, scope: 'link' }, { address: '198.18.1.5', prefix: 24, scope: 'global' }, { address: 'fd00::5', prefix: 64, scope: 'global' }] },
  { name: 'ens4', up: true, addresses: [{ address: '198.19.2.7', prefix: 16, scope: 'global' }] },
];

test('autodetection picks as Calico does', (t) => {
  const pick = (family: 4 | 6, env: Record<string, string>) => {
    const s = parseHostAddressSetting(env, family);
    return s.kind === 'autodetect' ? chooseHostAddress(ifs, family, s.method) : undefined;
  };
  t.deepEqual(pick(4, {}), { cidr: '198.18.1.5/24', interface: 'ens3' }, 'first-found skips lo, docker, cali and down links');
  t.deepEqual(pick(6, { IP6: 'autodetect' }), { cidr: 'fd00::5/64', interface: 'ens3' }, 'global scope only');
  t.deepEqual(pick(4, { IP_AUTODETECTION_METHOD: 'interface=ens4' }), { cidr: '198.19.2.7/16', interface: 'ens4' });
  t.deepEqual(pick(4, { IP_AUTODETECTION_METHOD: 'skip-interface=ens3' }), { cidr: '198.19.2.7/16', interface: 'ens4' });
  t.is(pick(4, { IP_AUTODETECTION_METHOD: 'interface=wlan.*' }), undefined);
  const reach = chooseHostAddress(ifs, 4, { kind: 'can-reach', destination: '198.19.0.1' }, { address: '198.19.2.7', interface: 'ens4' });
  t.deepEqual(reach, { cidr: '198.19.2.7/16', interface: 'ens4' }, 'the route source, with its interface prefix');
  t.is(chooseHostAddress(ifs, 4, { kind: 'can-reach', destination: '198.19.0.1' }), undefined, 'no route');
  t.deepEqual(completeHostAddress(ifs, '198.18.1.5', 4), { cidr: '198.18.1.5/24', interface: 'ens3' });
  t.deepEqual(completeHostAddress(ifs, '203.0.113.9', 4), { cidr: '203.0.113.9/32', interface: undefined }, 'a NAT address keeps a host prefix');
});
