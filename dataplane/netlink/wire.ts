// Netlink framing, shared by the rtnetlink and ipset messages: headers and attributes as bytes
// (host byte order), and the kernel's replies parsed back. Pure, no socket.
import { endianness } from 'node:os';

export const NLMSG_ERROR = 2;
export const NLMSG_DONE = 3;
export const NLM_F_REQUEST = 0x1;
export const NLM_F_ACK = 0x4;
export const NLM_F_EXCL = 0x200;
export const NLM_F_CREATE = 0x400;
const NLM_F_CAPPED = 0x100;
const NLM_F_ACK_TLVS = 0x200;
const NLMSGERR_ATTR_MSG = 1;
/** Attribute type flags. */
export const NLA_F_NESTED = 0x8000;
export const NLA_F_NET_BYTEORDER = 0x4000;
const NLMSG_HDRLEN = 16;

const LE = endianness() === 'LE';

/** A netlink attribute: bytes, or nested attributes. */
export interface Attr {
  type: number;
  value: Buffer | readonly Attr[];
}

export const align4 = (n: number): number => (n + 3) & ~3;

export function u16(n: number): Buffer {
  const b = Buffer.alloc(2);
  if (LE) b.writeUInt16LE(n);
  else b.writeUInt16BE(n);
  return b;
}

export function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  if (LE) b.writeUInt32LE(n >>> 0);
  else b.writeUInt32BE(n >>> 0);
  return b;
}

export function readU16(b: Buffer, at: number): number {
  return LE ? b.readUInt16LE(at) : b.readUInt16BE(at);
}

export function readU32(b: Buffer, at: number): number {
  return LE ? b.readUInt32LE(at) : b.readUInt32BE(at);
}

function readI32(b: Buffer, at: number): number {
  return LE ? b.readInt32LE(at) : b.readInt32BE(at);
}

export function encodeAttrs(attrs: readonly Attr[]): Buffer {
  const parts: Buffer[] = [];
  for (const a of attrs) {
    const value = Buffer.isBuffer(a.value) ? a.value : encodeAttrs(a.value);
    const len = 4 + value.length;
    parts.push(u16(len), u16(a.type), value, Buffer.alloc(align4(len) - len));
  }
  return Buffer.concat(parts);
}

/** One message: the 16-byte header, the family header (padded), the attributes. */
export function message(type: number, flags: number, seq: number, header: Buffer, attrs: readonly Attr[]): Buffer {
  const body = Buffer.concat([header, Buffer.alloc(align4(header.length) - header.length), encodeAttrs(attrs)]);
  return Buffer.concat([u32(NLMSG_HDRLEN + body.length), u16(type), u16(flags), u32(seq), u32(0), body]);
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
