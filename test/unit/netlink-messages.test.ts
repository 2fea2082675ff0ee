// The rtnetlink messages of dataplane/netlink/rtnetlink.ts, byte for byte where the layout is fixed
// by the kernel's headers, and the parsing of the kernel's replies. That the kernel accepts them
// and ends in the same state as with `ip` is test/integration/dataplane.test.ts's part.
import test from 'ava';
import { endianness } from 'node:os';
import {
  addressBytes,
  addrGenModeNone,
  delLink,
  getLink,
  linkIndex,
  linkUp,
  newAddress6NoDad,
  newHostRoute,
  newVeth,
} from '../../dataplane/netlink/rtnetlink.js';
import { acknowledged, parseMessages, refusalOf } from '../../dataplane/netlink/wire.js';
import { membershipChanges, membershipMessage } from '../../dataplane/netlink/ipset.js';
import { InvalidRequestError } from '../../lib/errors.js';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');

test.before((t) => {
  // The expected bytes below are little-endian headers (x86, arm64): the hosts this runs on.
  if (endianness() !== 'LE') t.fail('these byte layouts assume a little-endian host');
});

test('route add 10.65.0.42/32 dev <5> scope link: the bytes ip sends', (t) => {
  t.deepEqual(
    newHostRoute(7, 5, '10.65.0.42', true),
    hex(`
      2c000000 1800 0506 07000000 00000000
      02 20 00 00 fe 03 fd 01 00000000
      0800 0100 0a41002a
      0800 0400 05000000`),
  );
});

test('IPv6 host route: /128, universe scope, address in network order', (t) => {
  const m = newHostRoute(1, 9, 'fd65::44', false);
  t.is(m.readUInt32LE(0), m.length);
  t.deepEqual(m.subarray(16, 24), hex('0a 80 00 00 fe 03 00 01'));
  t.deepEqual(m.subarray(28, 32 + 16), hex('1400 0100 fd650000000000000000000000000044'));
  t.deepEqual(m.subarray(48), hex('0800 0400 09000000'));
});

test('link up, addrgenmode none, getlink and dellink name the link by index or by name', (t) => {
  t.deepEqual(linkUp(3, 12), hex('20000000 1000 0500 03000000 00000000  00 00 0000 0c000000 01000000 01000000'));
  t.deepEqual(
    addrGenModeNone(4, 12),
    hex('30000000 1000 0500 04000000 00000000  00 00 0000 0c000000 00000000 00000000  1000 1a00 0c00 0a00 0500 0800 01 000000'),
  );
  // "cali1\0" padded to 4 bytes.
  t.deepEqual(getLink(5, 'cali1'), hex('2c000000 1200 0500 05000000 00000000  00 00 0000 00000000 00000000 00000000  0a00 0300 63616c693100 0000'));
  t.deepEqual(delLink(6, 'cali1').subarray(4, 8), hex('1100 0500'));
});

test('veth add: host attributes, then the peer as a nested ifinfomsg with its own attributes', (t) => {
  const m = newVeth(8, { hostIf: 'caliab', peerIf: 'tmpab', mtu: 1400, hostMac: 'ee:ee:ee:ee:ee:ee', peerMac: '02:00:00:00:00:01' });
  t.is(m.readUInt32LE(0), m.length);
  t.is(m.readUInt16LE(4), 16); // RTM_NEWLINK
  t.is(m.readUInt16LE(6), 0x605); // REQUEST | ACK | CREATE | EXCL
  const text = m.toString('latin1');
  t.true(text.includes('caliab\0'));
  t.true(text.includes('veth'));
  // IFLA_LINKINFO > IFLA_INFO_DATA > VETH_INFO_PEER: 16-byte ifinfomsg, then name, MTU, address.
  const peer = m.indexOf(Buffer.from('tmpab\0', 'latin1'));
  t.true(peer > 0);
  t.deepEqual(m.subarray(peer - 4 - 16, peer - 4), Buffer.alloc(16));
  t.true(m.includes(hex('0800 0400 78050000'))); // IFLA_MTU 1400, twice
  t.true(m.includes(hex('0a00 0100 020000000001 0000'))); // the peer's MAC
  t.throws(() => newVeth(1, { hostIf: 'a-name-of-16char', peerIf: 'p', mtu: 1400, hostMac: 'ee:ee:ee:ee:ee:ee' }), { instanceOf: InvalidRequestError });
});

test('IPv6 address with nodad: prefix, flag and both address attributes', (t) => {
  const m = newAddress6NoDad(2, 7, 'fe80::ecee:eeff:feee:eeee', 64);
  t.deepEqual(m.subarray(16, 24), hex('0a 40 02 fd 07000000'));
  const a = hex('fe80000000000000eceeeefffeeeeeee');
  t.deepEqual(m.subarray(24), Buffer.concat([hex('1400 0200'), a, hex('1400 0100'), a]));
  t.throws(() => newAddress6NoDad(2, 7, '10.0.0.1', 64), { instanceOf: InvalidRequestError });
});

test('addressBytes: both families, network order; invalid input refused', (t) => {
  t.deepEqual(addressBytes('192.168.1.2'), { family: 4, bytes: hex('c0a80102') });
  t.deepEqual(addressBytes('::1'), { family: 6, bytes: hex('00000000000000000000000000000001') });
  t.throws(() => addressBytes('10.0.0.256'));
});

/** An NLMSG_ERROR for a request with header `req`: capped (header only) with an extended-ack
 * message, as a kernel with NETLINK_CAP_ACK and NETLINK_EXT_ACK on answers. */
function errorReply(code: number, req: Buffer, text?: string): Buffer {
  const tlv = text === undefined ? Buffer.alloc(0) : (() => {
    const v = Buffer.from(`${text}\0`, 'latin1');
    const len = 4 + v.length;
    const b = Buffer.alloc((len + 3) & ~3);
    b.writeUInt16LE(len, 0);
    b.writeUInt16LE(1, 2);
    v.copy(b, 4);
    return b;
  })();
  const body = Buffer.concat([Buffer.alloc(4), req.subarray(0, 16), tlv]);
  body.writeInt32LE(code, 0);
  const h = Buffer.alloc(16);
  h.writeUInt32LE(16 + body.length, 0);
  h.writeUInt16LE(2, 4);
  h.writeUInt16LE(text === undefined ? 0x100 : 0x300, 6);
  h.writeUInt32LE(req.readUInt32LE(8), 8);
  return Buffer.concat([h, body]);
}

test('replies: an ACK, a refusal with the kernel message, a link index', (t) => {
  const req = linkUp(42, 3);
  const ack = parseMessages(errorReply(0, req));
  t.is(ack.length, 1);
  t.is(ack[0]?.seq, 42);
  t.true(acknowledged(ack));
  t.is(refusalOf(ack), undefined);

  const refused = parseMessages(errorReply(-22, req, 'Invalid MTU'));
  t.false(acknowledged(refused));
  t.deepEqual(refusalOf(refused), { errno: 22, detail: 'Invalid MTU' });
  t.deepEqual(refusalOf(parseMessages(errorReply(-17, req))), { errno: 17 });

  // A getlink answer: RTM_NEWLINK carrying the index, then the ACK; both in one stream.
  const link = Buffer.concat([hex('20000000 1000 0000 05000000 00000000'), hex('00 00 0100 2a000000 43100100 00000000')]);
  const replies = parseMessages(Buffer.concat([link, errorReply(0, getLink(5, 'x'))]));
  t.is(replies.length, 2);
  t.is(linkIndex(replies), 42);
  t.true(acknowledged(replies));
  // A truncated stream ends the list instead of reading past the end.
  t.is(parseMessages(link.subarray(0, 20)).length, 0);
  t.is(linkIndex([]), undefined);
});

test('ipset: add a network member, the bytes `ipset -exist add` sends (less its line number)', (t) => {
  t.deepEqual(
    membershipMessage(5, { op: 'add', set: 'tset', member: '10.1.2.0/24' }),
    hex(`
      40000000 0906 0500 05000000 00000000
      02 00 0000
      0500 0100 07 000000
      0900 0200 7473657400 000000
      1800 0780 0c00 0180 0800 0140 0a010200 0500 0300 18 000000`),
  );
  // A bare address: no CIDR attribute (a host entry in hash:ip and hash:net alike); IPv6 family.
  const del6 = membershipMessage(6, { op: 'del', set: 'cali-6s-x', member: 'fd00::1' });
  t.is(del6.readUInt16LE(4), (6 << 8) | 10);
  t.is(del6[16], 10);
  t.true(del6.includes(hex('1400 0240 fd000000000000000000000000000001')));
  t.false(del6.includes(hex('0500 0300')));
  for (const bad of [{ set: 'bad name', member: '10.0.0.1' }, { set: 'x'.repeat(32), member: '10.0.0.1' }, { set: 's', member: '10.0.0.1/0' }, { set: 's', member: '10.0.0.1/33' }, { set: 's', member: 'nope' }]) {
    t.throws(() => membershipMessage(1, { op: 'add', ...bad }), undefined, JSON.stringify(bad));
  }
});

test('ipset: only add and del lines become netlink changes; anything else goes to the tool', (t) => {
  t.deepEqual(membershipChanges('add s1 10.0.0.1\ndel s2 10.0.1.0/24\n'), [
    { op: 'add', set: 's1', member: '10.0.0.1' },
    { op: 'del', set: 's2', member: '10.0.1.0/24' },
  ]);
  t.is(membershipChanges('create s1 hash:ip family inet\nadd s1 10.0.0.1\n'), undefined);
  t.is(membershipChanges('destroy s1\n'), undefined);
  t.is(membershipChanges('add s1 10.0.0.1 timeout 5\n'), undefined);
  t.deepEqual(membershipChanges(''), []);
});
