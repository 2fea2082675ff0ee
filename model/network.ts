// A Docker network served by this plugin, recorded at CreateNetwork. The profile name is known
// only once Docker has stored the network (CreateNetwork carries no name), so it is filled in by
// the first CreateEndpoint.
import { array, object, optional, record, str, unknownValue, withDefault } from '../lib/validate';

export const Network = object({
  id: str,
  /** Pools Docker was given for this network (0.0.0.0/0 and ::/0 mean "any enabled pool"). */
  ipv4Pools: array(str),
  ipv6Pools: array(str),
  /** Profile for endpoints on this network; '' until resolved. */
  profile: withDefault(str, ''),
  options: withDefault(record(unknownValue), {}),
  createdBy: str,
  createdAt: str,
  name: optional(str),
});
export type Network = ReturnType<typeof Network>;
