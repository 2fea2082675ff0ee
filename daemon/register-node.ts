// Records this host in the datastore: its name, version and addresses between hosts, so operators
// (calicoctl node list) and peers (routes between hosts) find it; and, on etcd, a key held by a
// lease for as long as the daemon runs, which is how other hosts tell it is alive. The embedded
// store serves one host, whose daemon is alive exactly while its store answers: it needs no lease.
import type { Config } from '../config/config';
import { modifyKey } from '../datastore/cas';
import type { Datastore } from '../datastore/datastore';
import type { Keys } from '../datastore/keys';
import type { DetectedAddress } from '../config/host-address';
import { NoHostAddressError, detectHostAddress } from './host-address';
import type { NetnsOption } from '../dataplane/veth';
import { serialize } from '../model/codec';
import type { Node } from '../model/node';

const VERSION = '0.2.0';
/** Tens of seconds, as Calico's: a restart within it never shows the host as dead, and a dead
 * host shows as such within it. The lease is renewed every third of it. */
export const NODE_LIVENESS_TTL_SECONDS = 30;

export interface Registration {
  readonly node: Node;
  /** Withdraws the liveness key (clean shutdown); the node record stays. */
  stop(): Promise<void>;
}

export async function registerNode(
  store: Datastore,
  keys: Keys,
  config: Config,
  ns: NetnsOption = {},
  warn: (message: string) => void = () => undefined,
): Promise<Registration> {
  // A host whose address cannot be detected still serves its own containers; other hosts just
  // cannot route to them until it has one.
  const detect = (family: 4 | 6): Promise<DetectedAddress | undefined> =>
    detectHostAddress(family === 4 ? config.hostIpv4 : config.hostIpv6, family, ns).catch((err: unknown) => {
      if (!(err instanceof NoHostAddressError)) throw err;
      warn(`${err.message}; other hosts cannot reach this host's containers until it has one`);
      return undefined;
    });
  const [v4, v6] = await Promise.all([detect(4), detect(6)]);
  const node: Node = {
    name: config.nodeName,
    version: VERSION,
    datastore: config.etcd === undefined ? 'embedded' : 'etcd',
    startedAt: new Date().toISOString(),
    ...(v4 !== undefined && { ipv4Address: v4.cidr }),
    ...(v6 !== undefined && { ipv6Address: v6.cidr }),
  };
  const value = serialize(node);
  await modifyKey(store, keys.node(config.nodeName), `register node ${config.nodeName}`, () => value);
  if (config.etcd === undefined) return { node, stop: async () => undefined };
  const { EtcdStore } = await import('../datastore/etcd-store.js');
  if (!(store instanceof EtcdStore)) return { node, stop: async () => undefined };
  const held = await store.holdKey(keys.nodeAlive(config.nodeName), JSON.stringify({ since: node.startedAt }), NODE_LIVENESS_TTL_SECONDS);
  return { node, stop: () => held.release() };
}
