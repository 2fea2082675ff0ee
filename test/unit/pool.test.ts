import test from 'ava';
import { formatCidr, parseCidr } from '../../ipam/cidr';
import { decodePool, encodePool, firstUnclaimedBlock, makePool, type Pool, type PoolInput, poolFamily } from '../../ipam/pool';
import { CorruptDataError, InvalidRequestError } from '../../lib/errors';

test('makePool: defaults and normalization', (t) => {
  const cases: Array<[PoolInput, Pool]> = [
    [{ cidr: '192.168.0.0/16' }, { cidr: '192.168.0.0/16', blockSize: 26, disabled: false, natOutgoing: false, vxlanMode: 'Never' }],
    [{ cidr: 'FD00:0::/64' }, { cidr: 'fd00::/64', blockSize: 122, disabled: false, natOutgoing: false, vxlanMode: 'Never' }],
    // A pool smaller than the default block is one block.
    [{ cidr: '10.0.0.0/28' }, { cidr: '10.0.0.0/28', blockSize: 28, disabled: false, natOutgoing: false, vxlanMode: 'Never' }],
    [{ cidr: 'fd00::/125' }, { cidr: 'fd00::/125', blockSize: 125, disabled: false, natOutgoing: false, vxlanMode: 'Never' }],
    [
      { cidr: '10.0.0.0/28', blockSize: 30, disabled: true, natOutgoing: true, createdAt: '2024-01-02T03:04:05.000Z' },
      { cidr: '10.0.0.0/28', blockSize: 30, disabled: true, natOutgoing: true, vxlanMode: 'Never', createdAt: '2024-01-02T03:04:05.000Z' },
    ],
    [{ cidr: '10.0.0.0/8', vxlanMode: 'CrossSubnet' }, { cidr: '10.0.0.0/8', blockSize: 26, disabled: false, natOutgoing: false, vxlanMode: 'CrossSubnet' }],
    [{ cidr: '10.0.0.0/8', vxlanMode: 'Always' }, { cidr: '10.0.0.0/8', blockSize: 26, disabled: false, natOutgoing: false, vxlanMode: 'Always' }],
    [{ cidr: 'fd00::/64', vxlanMode: 'Never' }, { cidr: 'fd00::/64', blockSize: 122, disabled: false, natOutgoing: false, vxlanMode: 'Never' }],
    [{ cidr: '10.0.0.0/8', blockSize: 20 }, { cidr: '10.0.0.0/8', blockSize: 20, disabled: false, natOutgoing: false, vxlanMode: 'Never' }],
    [{ cidr: '10.0.0.0/8', blockSize: 32 }, { cidr: '10.0.0.0/8', blockSize: 32, disabled: false, natOutgoing: false, vxlanMode: 'Never' }],
    [{ cidr: 'fd00::/48', blockSize: 116 }, { cidr: 'fd00::/48', blockSize: 116, disabled: false, natOutgoing: false, vxlanMode: 'Never' }],
  ];
  for (const [input, expected] of cases) t.deepEqual(makePool(input), expected, input.cidr);
  t.is(poolFamily(makePool({ cidr: 'fd00::/64' })), 6);
});

test('makePool: invalid input', (t) => {
  const cases: Array<[PoolInput, string]> = [
    [{ cidr: '10.0.0.1/24' }, 'invalid pool CIDR "10.0.0.1/24": host bits are set; the network is 10.0.0.0/24'],
    [{ cidr: '10.0.0.0/8', blockSize: 19 }, 'invalid pool 10.0.0.0/8: block size must be a prefix length from 20 to 32 for 10.0.0.0/8, got 19'],
    [{ cidr: '10.0.0.0/8', blockSize: 33 }, 'invalid pool 10.0.0.0/8: block size must be a prefix length from 20 to 32 for 10.0.0.0/8, got 33'],
    [{ cidr: '10.0.0.0/28', blockSize: 26 }, 'invalid pool 10.0.0.0/28: block size must be a prefix length from 28 to 32 for 10.0.0.0/28, got 26'],
    [{ cidr: '10.0.0.0/8', blockSize: 26.5 }, 'invalid pool 10.0.0.0/8: block size must be a prefix length from 20 to 32 for 10.0.0.0/8, got 26.5'],
    [{ cidr: 'fd00::/64', blockSize: 115 }, 'invalid pool fd00::/64: block size must be a prefix length from 116 to 128 for fd00::/64, got 115'],
    [{ cidr: 'fd00::/64', blockSize: 26 }, 'invalid pool fd00::/64: block size must be a prefix length from 116 to 128 for fd00::/64, got 26'],
    [{ cidr: '10.0.0.0/8', createdAt: 'yesterday' }, 'invalid pool 10.0.0.0/8: createdAt must be an ISO 8601 time, got "yesterday"'],
    [{ cidr: '10.0.0.0/8', disabled: 'yes' as unknown as boolean }, 'invalid pool 10.0.0.0/8: disabled must be true or false'],
    [{ cidr: '10.0.0.0/8', vxlanMode: 'always' }, 'invalid pool 10.0.0.0/8: vxlanMode must be one of Never, CrossSubnet, Always, got "always"'],
    [{ cidr: 'fd00::/64', vxlanMode: 'Always' }, 'invalid pool fd00::/64: VXLAN is built for IPv4 pools only; vxlanMode must be Never'],
  ];
  for (const [input, message] of cases) {
    t.throws(() => makePool(input), { instanceOf: InvalidRequestError, message }, JSON.stringify(input));
  }
});

test('encodePool / decodePool round trip', (t) => {
  const pools = [
    makePool({ cidr: '192.168.0.0/16', natOutgoing: true }),
    makePool({ cidr: 'fd00::/64', disabled: true, createdAt: '2024-01-02T03:04:05.000Z' }),
    makePool({ cidr: '10.0.0.0/8', vxlanMode: 'CrossSubnet' }),
  ];
  for (const pool of pools) t.deepEqual(decodePool(encodePool(pool), 'k', pool.cidr), pool, pool.cidr);
  // Fields a newer version adds are ignored.
  t.deepEqual(
    decodePool('{"cidr":"10.0.0.0/8","blockSize":26,"disabled":false,"natOutgoing":false,"ipip":"always"}', 'k'),
    { cidr: '10.0.0.0/8', blockSize: 26, disabled: false, natOutgoing: false, vxlanMode: 'Never' },
  );
});

test('decodePool: corrupt data gets a CorruptDataError naming the key', (t) => {
  const cases: Array<[string, string]> = [
    ['not json', 'corrupt IP pool at /k: not valid JSON'],
    ['[]', 'corrupt IP pool at /k: not a JSON object'],
    ['{"cidr":"10.0.0.0/8","blockSize":26,"disabled":false,"natOutgoing":false,"vxlanMode":"sometimes"}', 'corrupt IP pool at /k: vxlanMode must be one of Never, CrossSubnet, Always, got "sometimes"'],
    ['{"cidr":"10.0.0.1/8","blockSize":26,"disabled":false,"natOutgoing":false}', 'corrupt IP pool at /k: cidr must be a canonical CIDR string, got "10.0.0.1/8"'],
    ['{"cidr":"10.1.0.0/16","blockSize":26,"disabled":false,"natOutgoing":false}', 'corrupt IP pool at /k: cidr 10.1.0.0/16 does not match the key\'s 10.0.0.0/8'],
    ['{"cidr":"10.0.0.0/8","disabled":false,"natOutgoing":false}', 'corrupt IP pool at /k: block size must be a prefix length from 20 to 32 for 10.0.0.0/8, got undefined'],
    ['{"cidr":"10.0.0.0/8","blockSize":26,"natOutgoing":false}', 'corrupt IP pool at /k: disabled must be true or false'],
    ['{"cidr":"10.0.0.0/8","blockSize":26,"disabled":false,"natOutgoing":false,"createdAt":5}', 'corrupt IP pool at /k: createdAt must be an ISO 8601 time, got 5'],
  ];
  for (const [text, message] of cases) {
    const err = t.throws(() => decodePool(text, '/k', '10.0.0.0/8'), { instanceOf: CorruptDataError }, text);
    t.true(err?.message.startsWith(message), `${text}: ${err?.message}`);
  }
});

test('firstUnclaimedBlock: lowest gap, honouring odd-sized blocks', (t) => {
  const pool = makePool({ cidr: '10.0.0.0/28', blockSize: 30 });
  const cases: Array<[string[], string | undefined]> = [
    [[], '10.0.0.0/30'],
    [['10.0.0.0/30'], '10.0.0.4/30'],
    [['10.0.0.4/30'], '10.0.0.0/30'],
    [['10.0.0.0/30', '10.0.0.8/30'], '10.0.0.4/30'],
    [['10.0.0.12/30', '10.0.0.0/30', '10.0.0.4/30'], '10.0.0.8/30'],
    [['10.0.0.0/30', '10.0.0.4/30', '10.0.0.8/30', '10.0.0.12/30'], undefined],
    [['10.0.0.0/29'], '10.0.0.8/30'], // a larger block covers two
    [['10.0.0.1/32'], '10.0.0.4/30'], // a smaller block still claims its slot
    [['10.0.0.0/24'], undefined], // a block containing the whole pool
    [['10.0.1.0/30', 'fd00::/126'], '10.0.0.0/30'], // outside the pool
  ];
  for (const [existing, expected] of cases) {
    const got = firstUnclaimedBlock(pool, existing.map((c) => parseCidr(c)));
    t.is(got === undefined ? undefined : formatCidr(got), expected, existing.join(' '));
  }
});

test('firstUnclaimedBlock from an index: the first gap at or after it, wrapping around', (t) => {
  const pool = makePool({ cidr: '10.0.0.0/28', blockSize: 30 });
  const cases: Array<[string[], bigint, string | undefined]> = [
    [[], 2n, '10.0.0.8/30'],
    [[], 6n, '10.0.0.8/30'], // taken modulo the block count
    [['10.0.0.8/30'], 2n, '10.0.0.12/30'],
    [['10.0.0.8/30', '10.0.0.12/30'], 2n, '10.0.0.0/30'],
    [['10.0.0.0/29'], 1n, '10.0.0.8/30'], // a larger block covering the start
    [['10.0.0.0/30', '10.0.0.4/30', '10.0.0.8/30', '10.0.0.12/30'], 3n, undefined],
    [['10.0.0.4/30', '10.0.0.8/30', '10.0.0.12/30'], 3n, '10.0.0.0/30'],
  ];
  for (const [existing, from, expected] of cases) {
    const got = firstUnclaimedBlock(pool, existing.map((c) => parseCidr(c)), from);
    t.is(got === undefined ? undefined : formatCidr(got), expected, `${existing.join(' ')} from ${from}`);
  }
});

test('firstUnclaimedBlock: big pools cost what exists, not what could', (t) => {
  const pool = makePool({ cidr: 'fd00::/48' });
  const existing = ['fd00::/122', 'fd00::40/122'].map((c) => parseCidr(c));
  const got = firstUnclaimedBlock(pool, existing);
  t.is(got === undefined ? undefined : formatCidr(got), 'fd00::80/122');
});
