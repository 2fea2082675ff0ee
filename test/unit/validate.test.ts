import test from 'ava';
import { InvalidRequestError } from '../../lib/errors';
import { CreateEndpointRequest, CreateNetworkRequest, JoinRequest } from '../../protocol/network-driver-api';
import { RequestAddressRequest, RequestPoolRequest } from '../../protocol/ipam-driver-api';
import { decode } from '../../lib/validate';

const NET = '33e8c3ffd93bb1588888b07ef41c7bfd7bae094675c6b6fff644993d149b1523';
const EP = '22e5b9dd1c9566f75df28f03d3fa107f3ba89a442e658d265191988f71a2a48d';

test('null Options decode to an empty map (Docker sends null)', (t) => {
  t.deepEqual(decode(RequestAddressRequest, { PoolID: 'p', Address: '', Options: null }), { PoolID: 'p', Address: '', Options: {} });
});

test('optional fields default, unknown fields are ignored', (t) => {
  const r = decode(RequestPoolRequest, { AddressSpace: 'A', Extra: 1 });
  t.deepEqual(r, { AddressSpace: 'A', Pool: '', SubPool: '', Options: {}, V6: false });
});

const bad: [string, (v: unknown) => unknown, unknown, RegExp][] = [
  ['missing NetworkID', (v) => decode(CreateNetworkRequest, v), {}, /^NetworkID must be a string, got undefined$/],
  ['NetworkID not hex', (v) => decode(CreateNetworkRequest, v), { NetworkID: 'net1; rm -rf /' }, /NetworkID must be a Docker network ID/],
  ['IPv4Data wrong type', (v) => decode(CreateNetworkRequest, v), { NetworkID: NET, IPv4Data: 'x' }, /IPv4Data must be an array, got string/],
  ['nested pool missing', (v) => decode(CreateNetworkRequest, v), { NetworkID: NET, IPv4Data: [{}] }, /IPv4Data\[0\]\.Pool must be a string/],
  ['Interface address type', (v) => decode(CreateEndpointRequest, v), { NetworkID: NET, EndpointID: EP, Interface: { Address: 5 } }, /Interface\.Address must be a string, got number/],
  ['SandboxKey missing', (v) => decode(JoinRequest, v), { NetworkID: NET, EndpointID: EP }, /SandboxKey must be a string/],
  ['V6 not boolean', (v) => decode(RequestPoolRequest, v), { V6: 'yes' }, /V6 must be a boolean, got string/],
  ['body is an array', (v) => decode(RequestPoolRequest, v), [], /must be an object, got array/],
  ['option value not a string', (v) => decode(RequestAddressRequest, v), { PoolID: 'p', Options: { a: 1 } }, /Options\.a must be a string/],
];

for (const [name, fn, input, message] of bad) {
  test(`rejects ${name}`, (t) => {
    const err = t.throws(() => fn(input), { instanceOf: InvalidRequestError });
    t.regex(err.message, message);
  });
}

// Found while writing the fuzzer: a map's `__proto__` key (an own field after JSON.parse) was
// assigned, so it replaced the decoded map's prototype: the key vanished (an option slipped past
// the "unsupported option" check) and the map answered keys the request did not have.
test('a __proto__ key in a map stays a key and lends nothing', (t) => {
  const options = decode(CreateNetworkRequest, JSON.parse(`{"NetworkID":"${NET}","Options":{"__proto__":{"com.docker.network.enable_ipv6":true}}}`)).Options;
  t.deepEqual(Object.keys(options), ['__proto__']);
  t.is(options['com.docker.network.enable_ipv6'], undefined);
  t.is(Object.getPrototypeOf(options), Object.prototype);
  const pool = decode(RequestPoolRequest, JSON.parse('{"AddressSpace":"A","Options":{"__proto__":"x"}}'));
  t.deepEqual(Object.keys(pool.Options), ['__proto__']);
});
