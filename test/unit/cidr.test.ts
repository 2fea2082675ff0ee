import test from 'ava';
import {
  addressCount,
  addressIndex,
  blockContaining,
  blockCount,
  blockIndex,
  containsCidr,
  containsIp,
  formatCidr,
  formatIp,
  ipFamily,
  isCanonicalCidr,
  normalizeCidr,
  normalizeIp,
  nthAddress,
  nthBlock,
  overlaps,
  parseCidr,
  parseIp,
  tryParseIp,
} from '../../ipam/cidr';
import { InvalidRequestError } from '../../lib/errors';

const ip = (text: string) => parseIp(text);
const cidr = (text: string) => parseCidr(text);

test('normalizeIp: canonical spelling of valid addresses', (t) => {
  const cases: Array<[string, string]> = [
    ['10.0.0.1', '10.0.0.1'],
    ['0.0.0.0', '0.0.0.0'],
    ['255.255.255.255', '255.255.255.255'],
    ['FD00::1', 'fd00::1'],
    ['fd00:0:0:0:0:0:0:1', 'fd00::1'],
    ['2001:db8:0:0:1:0:0:1', '2001:db8::1:0:0:1'], // first of two equal zero runs
    ['2001:db8:0:1:1:1:1:1', '2001:db8:0:1:1:1:1:1'], // a single zero group stays
    ['2001:0db8::0001', '2001:db8::1'],
    ['::', '::'],
    ['::1', '::1'],
    ['1::', '1::'],
    ['::ffff:1.2.3.4', '::ffff:102:304'],
    ['1:2:3:4:5:6:7:8', '1:2:3:4:5:6:7:8'],
  ];
  for (const [input, expected] of cases) t.is(normalizeIp(input), expected, input);
});

test('parseIp: refuses what is not a bare address, naming the input', (t) => {
  const cases = ['', '10.0.0', '10.0.0.256', '010.0.0.1', '10.0.0.1/32', ' 10.0.0.1', 'fe80::1%eth0', 'fd00:::1', 'g::1', 'host'];
  for (const input of cases) {
    const err = t.throws(() => parseIp(input, '--ip'), { instanceOf: InvalidRequestError }, input);
    t.is(
      err?.message,
      `invalid --ip ${JSON.stringify(input)}: expected an IPv4 address (10.0.0.1) or an IPv6 address (fd00::1), without prefix length or zone`,
    );
    t.is(tryParseIp(input), undefined, input);
  }
});

test('ipFamily', (t) => {
  t.is(ipFamily('192.168.1.1'), 4);
  t.is(ipFamily('fd00::'), 6);
});

test('parseCidr / formatCidr: canonical forms', (t) => {
  const cases: Array<[string, string, 4 | 6, number]> = [
    ['10.0.0.0/8', '10.0.0.0/8', 4, 8],
    ['0.0.0.0/0', '0.0.0.0/0', 4, 0],
    ['10.0.0.5/32', '10.0.0.5/32', 4, 32],
    ['FD00:0::/64', 'fd00::/64', 6, 64],
    ['fd00::40/122', 'fd00::40/122', 6, 122],
    ['::/0', '::/0', 6, 0],
    ['fd00::1/128', 'fd00::1/128', 6, 128],
  ];
  for (const [input, expected, family, prefix] of cases) {
    const c = parseCidr(input);
    t.is(formatCidr(c), expected, input);
    t.is(c.family, family, input);
    t.is(c.prefix, prefix, input);
    t.is(normalizeCidr(input), expected, input);
  }
});

test('parseCidr: errors say what is wrong and how to fix it', (t) => {
  const cases: Array<[string, string]> = [
    ['10.0.0.1/24', 'invalid pool CIDR "10.0.0.1/24": host bits are set; the network is 10.0.0.0/24'],
    ['fd00::1/64', 'invalid pool CIDR "fd00::1/64": host bits are set; the network is fd00::/64'],
    ['10.0.0.0', 'invalid pool CIDR "10.0.0.0": missing prefix length, e.g. 10.0.0.0/24 or fd00::/64'],
    ['10.0.0.0/33', 'invalid pool CIDR "10.0.0.0/33": prefix length must be a number from 0 to 32 for IPv4'],
    ['fd00::/129', 'invalid pool CIDR "fd00::/129": prefix length must be a number from 0 to 128 for IPv6'],
    ['10.0.0.0/024', 'invalid pool CIDR "10.0.0.0/024": prefix length must be a number from 0 to 32 for IPv4'],
    ['10.0.0.0/+8', 'invalid pool CIDR "10.0.0.0/+8": prefix length must be a number from 0 to 32 for IPv4'],
    ['10.0.0.0/', 'invalid pool CIDR "10.0.0.0/": prefix length must be a number from 0 to 32 for IPv4'],
    ['10.0.0.0/8/8', 'invalid pool CIDR "10.0.0.0/8/8": prefix length must be a number from 0 to 32 for IPv4'],
    ['10.0.0/8', 'invalid pool CIDR "10.0.0/8": "10.0.0" is not an IPv4 or IPv6 address'],
    ['/8', 'invalid pool CIDR "/8": "" is not an IPv4 or IPv6 address'],
  ];
  for (const [input, message] of cases) {
    t.throws(() => parseCidr(input, 'pool CIDR'), { instanceOf: InvalidRequestError, message }, input);
  }
});

test('isCanonicalCidr: only the exact stored spelling', (t) => {
  const cases: Array<[string, boolean]> = [
    ['10.0.0.0/26', true],
    ['fd00::/122', true],
    ['FD00::/122', false],
    ['fd00:0::/122', false],
    ['10.0.0.1/26', false],
    ['nonsense', false],
  ];
  for (const [input, expected] of cases) t.is(isCanonicalCidr(input), expected, input);
});

test('containsIp', (t) => {
  const cases: Array<[string, string, boolean]> = [
    ['10.0.0.0/24', '10.0.0.0', true],
    ['10.0.0.0/24', '10.0.0.255', true],
    ['10.0.0.0/24', '10.0.1.0', false],
    ['10.0.0.0/24', '9.255.255.255', false],
    ['0.0.0.0/0', '1.2.3.4', true],
    ['fd00::/64', 'fd00::ffff:ffff:ffff:ffff', true],
    ['fd00::/64', 'fd00:0:0:1::', false],
    ['10.0.0.0/8', '::a00:1', false], // same low bits, other family
    ['::/0', '10.0.0.1', false],
  ];
  for (const [c, a, expected] of cases) t.is(containsIp(cidr(c), ip(a)), expected, `${c} ∋ ${a}`);
});

test('containsCidr and overlaps', (t) => {
  const cases: Array<[string, string, boolean, boolean]> = [
    // a, b, a contains b, overlap
    ['10.0.0.0/8', '10.1.0.0/16', true, true],
    ['10.1.0.0/16', '10.0.0.0/8', false, true],
    ['10.0.0.0/24', '10.0.0.0/24', true, true],
    ['10.0.0.0/24', '10.0.1.0/24', false, false],
    ['10.0.0.0/25', '10.0.0.128/25', false, false],
    ['fd00::/48', 'fd00:0:0:1::/64', true, true],
    ['fd00::/64', 'fd01::/64', false, false],
    ['0.0.0.0/0', '::/0', false, false],
  ];
  for (const [a, b, contains, overlap] of cases) {
    t.is(containsCidr(cidr(a), cidr(b)), contains, `${a} ⊇ ${b}`);
    t.is(overlaps(cidr(a), cidr(b)), overlap, `${a} ∩ ${b}`);
    t.is(overlaps(cidr(b), cidr(a)), overlap, `${b} ∩ ${a}`);
  }
});

test('addressCount', (t) => {
  const cases: Array<[string, bigint]> = [
    ['10.0.0.0/26', 64n],
    ['10.0.0.1/32', 1n],
    ['0.0.0.0/0', 1n << 32n],
    ['fd00::/122', 64n],
    ['fd00::/64', 1n << 64n],
    ['::/0', 1n << 128n],
  ];
  for (const [c, n] of cases) t.is(addressCount(cidr(c)), n, c);
});

test('nthAddress and addressIndex are inverse', (t) => {
  const cases: Array<[string, bigint, string]> = [
    ['10.0.0.0/24', 0n, '10.0.0.0'],
    ['10.0.0.0/24', 255n, '10.0.0.255'],
    ['10.0.0.0/8', 65536n, '10.1.0.0'],
    ['fd00::/64', 1n, 'fd00::1'],
    ['fd00::/64', (1n << 64n) - 1n, 'fd00::ffff:ffff:ffff:ffff'],
    ['fd00::40/122', 63n, 'fd00::7f'],
  ];
  for (const [c, n, a] of cases) {
    t.is(formatIp(nthAddress(cidr(c), n)), a, `${c}[${n}]`);
    t.is(addressIndex(cidr(c), ip(a)), n, `${a} in ${c}`);
  }
  t.is(formatIp(nthAddress(cidr('10.0.0.0/24'), 7)), '10.0.0.7', 'number index');
  t.is(addressIndex(cidr('10.0.0.0/24'), ip('10.0.1.0')), undefined);
  t.is(addressIndex(cidr('10.0.0.0/24'), ip('fd00::')), undefined);
});

test('nthAddress: out of range', (t) => {
  const cases: Array<[string, bigint | number, string]> = [
    ['10.0.0.0/24', 256n, 'address index 256 is outside 10.0.0.0/24, which has 256 addresses'],
    ['10.0.0.0/24', -1n, 'address index -1 is outside 10.0.0.0/24, which has 256 addresses'],
    ['fd00::/126', 4, 'address index 4 is outside fd00::/126, which has 4 addresses'],
    ['10.0.0.0/24', 1.5, 'address index must be an integer, got 1.5'],
  ];
  for (const [c, n, message] of cases) {
    t.throws(() => nthAddress(cidr(c), n), { instanceOf: InvalidRequestError, message }, `${c}[${n}]`);
  }
});

test('blocks: count, n-th, index, without enumerating', (t) => {
  const cases: Array<[string, number, bigint, bigint, string]> = [
    // pool, block prefix, count, index, that block
    ['10.0.0.0/8', 26, 262144n, 0n, '10.0.0.0/26'],
    ['10.0.0.0/8', 26, 262144n, 262143n, '10.255.255.192/26'],
    ['10.0.0.0/8', 26, 262144n, 5n, '10.0.1.64/26'],
    ['10.0.0.0/28', 30, 4n, 3n, '10.0.0.12/30'],
    ['10.0.0.0/26', 26, 1n, 0n, '10.0.0.0/26'],
    ['fd00::/48', 122, 1n << 74n, (1n << 74n) - 1n, 'fd00::ffff:ffff:ffff:ffff:ffc0/122'],
    ['fd00::/64', 122, 1n << 58n, 1n, 'fd00::40/122'],
  ];
  for (const [pool, size, count, n, block] of cases) {
    t.is(blockCount(cidr(pool), size), count, `${pool} /${size}`);
    t.is(formatCidr(nthBlock(cidr(pool), size, n)), block, `${pool}[${n}]`);
    t.is(blockIndex(cidr(pool), size, cidr(block)), n, `${block} in ${pool}`);
    t.is(blockIndex(cidr(pool), size, nthAddress(cidr(block), 1n)), n, `address in ${block}`);
  }
  t.is(blockIndex(cidr('10.0.0.0/24'), 26, ip('10.0.1.1')), undefined);
});

test('block prefix errors', (t) => {
  const cases: Array<[() => unknown, string]> = [
    [() => blockCount(cidr('10.0.0.0/24'), 20), 'block prefix length 20 does not fit 10.0.0.0/24: it must be from 24 to 32'],
    [() => blockCount(cidr('10.0.0.0/24'), 33), 'block prefix length 33 does not fit 10.0.0.0/24: it must be from 24 to 32'],
    [() => nthBlock(cidr('10.0.0.0/24'), 26, 4n), 'block index 4 is outside 10.0.0.0/24, which has 4 blocks of /26'],
    [() => blockContaining(ip('fd00::1'), 129), 'block prefix length 129 is invalid for IPv6: it must be from 0 to 128'],
  ];
  for (const [fn, message] of cases) t.throws(fn, { instanceOf: InvalidRequestError, message });
});

test('blockContaining', (t) => {
  const cases: Array<[string, number, string]> = [
    ['10.0.0.77', 26, '10.0.0.64/26'],
    ['10.0.0.63', 26, '10.0.0.0/26'],
    ['10.0.0.7', 30, '10.0.0.4/30'],
    ['10.0.0.7', 32, '10.0.0.7/32'],
    ['fd00::abcd', 122, 'fd00::abc0/122'],
    ['fd00::1', 128, 'fd00::1/128'],
  ];
  for (const [a, size, block] of cases) t.is(formatCidr(blockContaining(ip(a), size)), block, `${a} /${size}`);
});
