// ipset membership changes as netfilter netlink messages (framing: wire.ts): pure, no socket.
// The policy dataplane's incremental writes that only add and delete members of existing sets
// (a container coming or going) go to the kernel this way instead of through an `ipset restore`
// process; anything else (creating, flushing, destroying sets) stays with the tool.
//
// Each message is what `ipset -exist add|del <set> <member>` sends: without NLM_F_EXCL, so adding
// a member that is there or deleting one that is not is no error, as with -exist.
import { InvalidRequestError } from '../../lib/errors';
import { addressBytes } from './rtnetlink';
import { type Attr, message, NLA_F_NESTED, NLA_F_NET_BYTEORDER, NLM_F_ACK, NLM_F_REQUEST, u16 } from './wire';

// <linux/netfilter/nfnetlink.h>, <linux/netfilter/ipset/ip_set.h>
const NFNL_SUBSYS_IPSET = 6;
const IPSET_CMD_ADD = 9;
const IPSET_CMD_DEL = 10;
const IPSET_PROTOCOL = 7;
const IPSET_ATTR_PROTOCOL = 1;
const IPSET_ATTR_SETNAME = 2;
const IPSET_ATTR_DATA = 7;
const IPSET_ATTR_IP = 1;
const IPSET_ATTR_CIDR = 3;
const IPSET_ATTR_IPADDR_IPV4 = 1;
const IPSET_ATTR_IPADDR_IPV6 = 2;
const IPSET_MAXNAMELEN = 32;
const NFNETLINK_V0 = 0;
const AF_INET = 2;
const AF_INET6 = 10;

export interface MembershipChange {
  op: 'add' | 'del';
  set: string;
  /** An address, or a network `address/prefix` (hash:net). */
  member: string;
}

const SET_NAME = /^[A-Za-z0-9_.:-]{1,31}$/;

/**
 * The changes of an `ipset restore` input that holds only `add` and `del` lines (the policy diff's
 * membership updates); undefined when it holds anything else, which then goes to the tool.
 */
export function membershipChanges(restoreInput: string): MembershipChange[] | undefined {
  const out: MembershipChange[] = [];
  for (const line of restoreInput.split('\n')) {
    if (line === '') continue;
    const m = /^(add|del) (\S+) (\S+)$/.exec(line);
    if (m === null) return undefined;
    out.push({ op: m[1] as 'add' | 'del', set: m[2] as string, member: m[3] as string });
  }
  return out;
}

/** The message for one change. Names and members are checked here too: they reach the kernel. */
export function membershipMessage(seq: number, change: MembershipChange): Buffer {
  if (!SET_NAME.test(change.set)) throw new InvalidRequestError(`invalid ipset name ${JSON.stringify(change.set)}`);
  const slash = change.member.indexOf('/');
  const address = slash === -1 ? change.member : change.member.slice(0, slash);
  const { family, bytes } = addressBytes(address);
  let cidr: number | undefined;
  if (slash !== -1) {
    const text = change.member.slice(slash + 1);
    cidr = Number(text);
    if (!/^\d{1,3}$/.test(text) || cidr < 1 || cidr > (family === 4 ? 32 : 128)) {
      throw new InvalidRequestError(`invalid ipset member ${JSON.stringify(change.member)}`);
    }
  }
  const name = Buffer.from(`${change.set}\0`, 'latin1');
  if (name.length > IPSET_MAXNAMELEN) throw new InvalidRequestError(`ipset name ${change.set} is too long`);
  const data: Attr[] = [
    { type: IPSET_ATTR_IP | NLA_F_NESTED, value: [{ type: (family === 4 ? IPSET_ATTR_IPADDR_IPV4 : IPSET_ATTR_IPADDR_IPV6) | NLA_F_NET_BYTEORDER, value: bytes }] },
    ...(cidr === undefined ? [] : [{ type: IPSET_ATTR_CIDR, value: Buffer.from([cidr]) }]),
  ];
  // nfgenmsg: family u8, version u8, res_id u16 (big-endian; 0)
  const header = Buffer.concat([Buffer.from([family === 4 ? AF_INET : AF_INET6, NFNETLINK_V0]), u16(0)]);
  const type = (NFNL_SUBSYS_IPSET << 8) | (change.op === 'add' ? IPSET_CMD_ADD : IPSET_CMD_DEL);
  return message(type, NLM_F_REQUEST | NLM_F_ACK, seq, header, [
    { type: IPSET_ATTR_PROTOCOL, value: Buffer.from([IPSET_PROTOCOL]) },
    { type: IPSET_ATTR_SETNAME, value: name },
    { type: IPSET_ATTR_DATA | NLA_F_NESTED, value: data },
  ]);
}

/** ipset's own error codes start here (ip_set.h); below it a refusal is an errno. */
const IPSET_ERR_PRIVATE = 4096;

/** Words for a refusal's code when it is ipset's own, not an errno. */
export function ipsetErrorText(code: number): string | undefined {
  return code >= IPSET_ERR_PRIVATE ? `ipset error ${code} (ip_set.h); a full resync rewrites the sets with the ipset tool` : undefined;
}
