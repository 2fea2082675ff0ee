// A host running the plugin. Registered at start so operators and peers (routes between hosts)
// see which hosts exist, their addresses and which blocks they own. Whether a host is alive is a
// separate key (keys.nodeAlive) held by an etcd lease while its daemon runs.
import { object, optional, str } from '../lib/validate';

export const Node = object({
  name: str,
  version: str,
  datastore: str,
  startedAt: str,
  /** address/prefix on the network between hosts (IP, IP6); absent with 'none'. */
  ipv4Address: optional(str),
  ipv6Address: optional(str),
});
export type Node = ReturnType<typeof Node>;
