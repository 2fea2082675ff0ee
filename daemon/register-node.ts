// Records this host in the datastore: operators see which hosts run the plugin, and hosts that
// will later exchange routes find each other here.
import type { Config } from '../config/config';
import type { Datastore } from '../datastore/datastore';
import type { Keys } from '../datastore/keys';
import { modifyKey } from '../datastore/cas';
import { serialize } from '../model/codec';
import type { Node } from '../model/node';

const VERSION = '0.1.0';

export async function registerNode(store: Datastore, keys: Keys, config: Config): Promise<void> {
  const key = keys.node(config.nodeName);
  const node: Node = {
    name: config.nodeName,
    version: VERSION,
    datastore: config.etcd === undefined ? 'embedded' : 'etcd',
    startedAt: new Date().toISOString(),
  };
  const value = serialize(node);
  await modifyKey(store, key, `register node ${config.nodeName}`, () => value);
}
