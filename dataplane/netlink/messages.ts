// rtnetlink messages as bytes, and the kernel's replies parsed back: pure, no socket. Only what
// an endpoint's veth needs (dataplane/veth.ts): create a veth pair, look a link up by name, set
// it up and its IPv6 address generation off, add a link-local address, add a host route, delete
// a link. Each builder produces the message `ip` sends for the same command line, so both paths
// leave the kernel in the same state (test/integration/dataplane.test.ts compares them).
//
// Netlink headers and attributes are in the host's byte order; addresses in network order.
import { endianness } from 'node:os';
import { parseIp } from '../../ipam/cidr';
import { InvalidRequestError } from '../../lib/errors';

// <linux/netlink.h>, <linux/rtnetlink.h>, <linux/if_link.h>, <linux/veth.h>, <linux/if_addr.h>
export const NLMSG_ERROR = 2;
export const NLMSG_DONE = 3;
export const RTM_NEWLINK = 16;
export const RTM_DELLINK = 17;
export const RTM_GETLINK = 18;
export const RTM_NEWADDR = 20;
export const RTM_NEWROUTE = 24;
const NLM_F_REQUEST = 0x1;
const NLM_F_ACK = 0x4;
const NLM_F_EXCL = 0x200;
const NLM_F_CREATE = 0x400;
const NLM_F_CAPPED = 0x100;
const NLM_F_ACK_TLVS = 0x200;
const NLMSGERR_ATTR_MSG = 1;
const AF_UNSPEC = 0;
const AF_INET = 2;
const AF_INET6 = 10;
const IFF_UP = 0x1;
const IFLA_ADDRESS = 1;
const IFLA_IFNAME = 3;
const IFLA_MTU = 4;
const IFLA_LINKINFO = 18;
const IFLA_AF_SPEC = 26;
const IFLA_INFO_KIND = 1;
const IFLA_INFO_DATA = 2;
const VETH_INFO_PEER = 1;
const IFLA_INET6_ADDR_GEN_MODE = 8;
const IN6_ADDR_GEN_MODE_NONE = 1;
const IFA_ADDRESS = 1;
const IFA_LOCAL = 2;
const IFA_F_NODAD = 0x02;
const RTA_DST = 1;
const RTA_OIF = 4;
const RT_TABLE_MAIN = 254;
const RTPROT_BOOT = 3;
const RT_SCOPE_UNIVERSE = 0;
const RT_SCOPE_LINK = 253;
const RTN_UNICAST = 1;

const NLMSG_HDRLEN = 16;
const IFINFOMSG_LEN = 16;
const IFNAMSIZ = 16;

const LE = endianness() === 'LE';

/** A netlink attribute: bytes, or nested attributes. */
interface Attr {
  type: number;
  value: Buffer | readonly Attr[];
}

const align4 = (n: number): number => (n + 3) & ~3;

function u16(n: number): Buffer {
  const b = Buffer.alloc(2);
  if (LE) b.writeUInt16LE(n);
  else b.writeUInt16BE(n);
  return b;
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  if (LE) b.writeUInt32LE(n >>> 0);
  else b.writeUInt32BE(n >>> 0);
  return b;
}

function readU16(b: Buffer, at: number): number {
  return LE ? b.readUInt16LE(at) : b.readUInt16BE(at);
}

function readU32(b: Buffer, at: number): number {
  return LE ? b.readUInt32LE(at) : b.readUInt32BE(at);
}

function readI32(b: Buffer, at: number): number {
  return LE ? b.readInt32LE(at) : b.readInt32BE(at);
}

/** A NUL-terminated interface name; names are validated before they get here, this guards. */
function ifname(name: string): Buffer {
  const b = Buffer.from(`${name}\0`, 'latin1');
  if (b.length > IFNAMSIZ || name.length === 0) throw new InvalidRequestError(`interface name ${JSON.stringify(name)} does not fit the kernel's 15 characters`);
  return b;
}

function mac(text: string): Buffer {
  const parts = text.split(':');
  if (parts.length !== 6 || parts.some((p) => !/^[0-9a-fA-F]{2}$/.test(p))) throw new InvalidRequestError(`invalid MAC address ${text}`);
  return Buffer.from(parts.map((p) => parseInt(p, 16)));
}

/** An address in network byte order. */
export function addressBytes(text: string): { family: 4 | 6; bytes: Buffer } {
  const ip = parseIp(text);
  const len = ip.family === 4 ? 4 : 16;
  const bytes = Buffer.alloc(len);
  let v = ip.value;
  for (let i = len - 1; i >= 0; i--) {
    bytes[i] = Number(v & 0xffn);
    v >>= 8n;
  }
  return { family: ip.family, bytes };
}

function encodeAttrs(attrs: readonly Attr[]): Buffer {
  const parts: Buffer[] = [];
  for (const a of attrs) {
    const value = Buffer.isBuffer(a.value) ? a.value : encodeAttrs(a.value);
    const len = 4 + value.length;
    parts.push(u16(len), u16(a.type), value, Buffer.alloc(align4(len) - len));
  }
  return Buffer.concat(parts);
}

function message(type: number, flags: number, seq: number, header: Buffer, attrs: readonly Attr[]): Buffer {
  const body = Buffer.concat([header, Buffer.alloc(align4(header.length) - header.length), encodeAttrs(attrs)]);
  return Buffer.concat([u32(NLMSG_HDRLEN + body.length), u16(type), u16(flags), u32(seq), u32(0), body]);
}

function ifinfomsg(index: number, flags = 0, change = 0): Buffer {
  // family u8, pad u8, type u16, index s32, flags u32, change u32
  return Buffer.concat([Buffer.from([AF_UNSPEC, 0]), u16(0), u32(index), u32(flags), u32(change)]);
}

export interface VethAdd {
  hostIf: string;
  peerIf: string;
  mtu: number;
  hostMac: string;
  peerMac?: string;
}

/** `ip link add <hostIf> mtu M address A type veth peer name <peerIf> mtu M [address B]`. */
export function newVeth(seq: number, v: VethAdd): Buffer {
  const peer = Buffer.concat([
    ifinfomsg(0),
    encodeAttrs([
      { type: IFLA_IFNAME, value: ifname(v.peerIf) },
      { type: IFLA_MTU, value: u32(v.mtu) },
      ...(v.peerMac === undefined ? [] : [{ type: IFLA_ADDRESS, value: mac(v.peerMac) }]),
    ]),
  ]);
  return message(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, seq, ifinfomsg(0), [
    { type: IFLA_IFNAME, value: ifname(v.hostIf) },
    { type: IFLA_MTU, value: u32(v.mtu) },
    { type: IFLA_ADDRESS, value: mac(v.hostMac) },
    {
      type: IFLA_LINKINFO,
      value: [
        { type: IFLA_INFO_KIND, value: Buffer.from('veth', 'latin1') },
        { type: IFLA_INFO_DATA, value: [{ type: VETH_INFO_PEER, value: peer }] },
      ],
    },
  ]);
}

/** `ip link show dev <name>`: the reply carries the link's index (linkIndex). */
export function getLink(seq: number, name: string): Buffer {
  return message(RTM_GETLINK, NLM_F_REQUEST | NLM_F_ACK, seq, ifinfomsg(0), [{ type: IFLA_IFNAME, value: ifname(name) }]);
}

/** `ip link set dev <index> addrgenmode none`. */
export function addrGenModeNone(seq: number, index: number): Buffer {
  return message(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, seq, ifinfomsg(index), [
    { type: IFLA_AF_SPEC, value: [{ type: AF_INET6, value: [{ type: IFLA_INET6_ADDR_GEN_MODE, value: Buffer.from([IN6_ADDR_GEN_MODE_NONE]) }] }] },
  ]);
}

/** `ip link set dev <index> up`. */
export function linkUp(seq: number, index: number): Buffer {
  return message(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, seq, ifinfomsg(index, IFF_UP, IFF_UP), []);
}

/** `ip link del dev <name>`. */
export function delLink(seq: number, name: string): Buffer {
  return message(RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK, seq, ifinfomsg(0), [{ type: IFLA_IFNAME, value: ifname(name) }]);
}

/** `ip addr add <address>/<prefix> dev <index> nodad` (IPv6). */
export function newAddress6NoDad(seq: number, index: number, address: string, prefix: number): Buffer {
  const a = addressBytes(address);
  if (a.family !== 6) throw new InvalidRequestError(`${address} is not an IPv6 address`);
  // family u8, prefixlen u8, flags u8, scope u8, index u32. The kernel derives an IPv6 address's
  // scope from the address itself.
  const header = Buffer.concat([Buffer.from([AF_INET6, prefix, IFA_F_NODAD, RT_SCOPE_LINK]), u32(index)]);
  return message(RTM_NEWADDR, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, seq, header, [
    { type: IFA_LOCAL, value: a.bytes },
    { type: IFA_ADDRESS, value: a.bytes },
  ]);
}

/** `ip route add <address>/<full> dev <index> [scope link]` in the main table. As `ip` does,
 * IPv4 host routes are link-scoped when asked and IPv6 ones universe-scoped. */
export function newHostRoute(seq: number, index: number, address: string, scopeLink: boolean): Buffer {
  const a = addressBytes(address);
  // family, dst_len, src_len, tos, table, protocol, scope, type; flags u32
  const header = Buffer.concat([
    Buffer.from([a.family === 4 ? AF_INET : AF_INET6, a.bytes.length * 8, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, scopeLink ? RT_SCOPE_LINK : RT_SCOPE_UNIVERSE, RTN_UNICAST]),
    u32(0),
  ]);
  return message(RTM_NEWROUTE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, seq, header, [
    { type: RTA_DST, value: a.bytes },
    { type: RTA_OIF, value: u32(index) },
  ]);
}

export interface Reply {
  type: number;
  flags: number;
  seq: number;
  /** The message's bytes after the 16-byte header. */
  payload: Buffer;
}

/** Split a reply stream into messages; a truncated message ends the list. */
export function parseMessages(bytes: Buffer): Reply[] {
  const out: Reply[] = [];
  let at = 0;
  while (at + NLMSG_HDRLEN <= bytes.length) {
    const len = readU32(bytes, at);
    if (len < NLMSG_HDRLEN || at + len > bytes.length) break;
    out.push({ type: readU16(bytes, at + 4), flags: readU16(bytes, at + 6), seq: readU32(bytes, at + 8), payload: bytes.subarray(at + NLMSG_HDRLEN, at + len) });
    at += align4(len);
  }
  return out;
}

export interface KernelRefusal {
  /** Positive errno. */
  errno: number;
  /** The kernel's extended-ack text, when it gave one ("Invalid MTU"). */
  detail?: string;
}

/** The refusal among a request's replies (an NLMSG_ERROR with a non-zero code), if any. */
export function refusalOf(replies: readonly Reply[]): KernelRefusal | undefined {
  for (const r of replies) {
    if (r.type !== NLMSG_ERROR || r.payload.length < 4) continue;
    const code = readI32(r.payload, 0);
    if (code === 0) continue;
    const refusal: KernelRefusal = { errno: -code };
    if ((r.flags & NLM_F_ACK_TLVS) !== 0 && r.payload.length >= 4 + NLMSG_HDRLEN) {
      // After the code comes the request's header, and its payload unless the reply is capped.
      const echoed = (r.flags & NLM_F_CAPPED) !== 0 ? NLMSG_HDRLEN : readU32(r.payload, 4);
      const detail = attrString(r.payload.subarray(4 + align4(echoed)), NLMSGERR_ATTR_MSG);
      if (detail !== undefined && detail !== '') refusal.detail = detail;
    }
    return refusal;
  }
  return undefined;
}

/** Whether the replies end in an acknowledgement (an NLMSG_ERROR of 0) or NLMSG_DONE. */
export function acknowledged(replies: readonly Reply[]): boolean {
  const last = replies[replies.length - 1];
  if (last === undefined) return false;
  if (last.type === NLMSG_DONE) return true;
  return last.type === NLMSG_ERROR && last.payload.length >= 4 && readI32(last.payload, 0) === 0;
}

/** The index of the link an RTM_NEWLINK reply (the answer to getLink) describes. */
export function linkIndex(replies: readonly Reply[]): number | undefined {
  const link = replies.find((r) => r.type === RTM_NEWLINK && r.payload.length >= IFINFOMSG_LEN);
  return link === undefined ? undefined : readU32(link.payload, 4);
}

function attrString(attrs: Buffer, type: number): string | undefined {
  let at = 0;
  while (at + 4 <= attrs.length) {
    const len = readU16(attrs, at);
    if (len < 4 || at + len > attrs.length) return undefined;
    if ((readU16(attrs, at + 2) & 0x3fff) === type) return attrs.subarray(at + 4, at + len).toString('latin1').replace(/\0+$/, '');
    at += align4(len);
  }
  return undefined;
}
