// rtnetlink messages as bytes (framing: wire.ts): pure, no socket. Only what
// an endpoint's veth needs (dataplane/veth.ts): create a veth pair, look a link up by name, set
// it up and its IPv6 address generation off, add a link-local address, add a host route, delete
// a link. Each builder produces the message `ip` sends for the same command line, so both paths
// leave the kernel in the same state (test/integration/dataplane.test.ts compares them).
//
// Netlink headers and attributes are in the host's byte order; addresses in network order.
import { parseIp } from '../../ipam/cidr';
import { InvalidRequestError } from '../../lib/errors';
import { encodeAttrs, message, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, readU32, type Reply, u16, u32 } from './wire';

// <linux/netlink.h>, <linux/rtnetlink.h>, <linux/if_link.h>, <linux/veth.h>, <linux/if_addr.h>
export const RTM_NEWLINK = 16;
export const RTM_DELLINK = 17;
export const RTM_GETLINK = 18;
export const RTM_NEWADDR = 20;
export const RTM_NEWROUTE = 24;
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

const IFINFOMSG_LEN = 16;
const IFNAMSIZ = 16;

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

/** The index of the link an RTM_NEWLINK reply (the answer to getLink) describes. */
export function linkIndex(replies: readonly Reply[]): number | undefined {
  const link = replies.find((r) => r.type === RTM_NEWLINK && r.payload.length >= IFINFOMSG_LEN);
  return link === undefined ? undefined : readU32(link.payload, 4);
}
