// A workload endpoint: one container's attachment to one network on one host. Stored under its
// node so a host lists only its own endpoints, and so policy agents on other hosts can find the
// addresses behind a profile or label.
import type { Datastore } from '../datastore/datastore';
import type { Keys } from '../datastore/keys';
import { array, bool, num, object, optional, record, str, withDefault } from '../lib/validate';
import { parseStored } from './codec';

export const Endpoint = object({
  id: str,
  networkId: str,
  node: str,
  /** Host-side interface, derived from the id (see dataplane/names.ts). */
  hostInterface: str,
  /** Addresses with prefix length, e.g. 10.0.0.5/32 and fd00::5/128. */
  ipv4: withDefault(array(str), []),
  ipv6: withDefault(array(str), []),
  mac: withDefault(str, ''),
  profiles: withDefault(array(str), []),
  /** Container labels org.projectcalico.label.<key>=<value>, as <key>=<value>. */
  labels: withDefault(record(str), {}),
  /** False until everything policy depends on (the container's labels) is known. Policy agents
   * keep a not-ready endpoint isolated: its interface gets no dispatch rule, so the final drop
   * applies (fail closed). */
  ready: withDefault(bool, true),
  /** The network's name (and so its profile) could not be learnt from Docker yet: the endpoint
   * stays not ready, and so isolated, until the label resolver learns it. Falling back to the
   * network ID instead would split one network into one profile per host. */
  profilesPending: withDefault(bool, false),
  containerId: optional(str),
  /** The workload's network namespace (Docker's SandboxKey), recorded when it is attached: a
   * container on several of our networks has one endpoint per network in the same namespace. */
  sandbox: optional(str),
  /** The endpoint's interface number in its namespace, which picks its gateway addresses
   * (dataplane/veth.ts workloadGateways): the lowest one no other endpoint there uses. */
  gatewayIndex: withDefault(num, 0),
  createdAt: str,
});
export type Endpoint = ReturnType<typeof Endpoint>;

/** Every endpoint recorded for the node (one listing of its prefix). */
export async function listNodeEndpoints(store: Datastore, keys: Keys, node: string): Promise<Endpoint[]> {
  const { items } = await store.list(keys.endpointsPrefix(node));
  return items.map((kv) => parseStored(Endpoint, kv));
}
