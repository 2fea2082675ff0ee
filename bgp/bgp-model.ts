// BGP records in the datastore (keys.ts: <root>/bgp/...). Decoded loosely here (shape only);
// every value is validated again by bird-config.ts before it reaches BIRD, so a record written
// by hand into etcd is refused there, not rendered.
import { bool, num, object, optional, str } from '../lib/validate';

/** <root>/bgp/config; absent: mesh on, AS 64512 (Calico's defaults). */
export const BgpSettings = object({
  nodeToNodeMesh: optional(bool),
  asNumber: optional(num),
});
export type BgpSettings = ReturnType<typeof BgpSettings>;

/** <root>/bgp/nodes/<node>: per-host settings, kept apart from the node record the daemon
 * rewrites at every start. */
export const BgpNodeSettings = object({
  asNumber: optional(num),
  /** Set: this host is a route reflector with this cluster ID (IPv4-shaped). */
  routeReflectorClusterId: optional(str),
});
export type BgpNodeSettings = ReturnType<typeof BgpNodeSettings>;

/** <root>/bgp/peers/global/<address> and <root>/bgp/peers/node/<node>/<address>. */
export const BgpPeerRecord = object({
  address: str,
  asNumber: num,
});
export type BgpPeerRecord = ReturnType<typeof BgpPeerRecord>;
