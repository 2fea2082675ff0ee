// On first start a host with no pool of a family gets the configured default pool (Calico's
// behaviour), so `docker network create -d calico --ipam-driver calico-ipam net1` works at once.
// As in Calico, the default pools masquerade traffic to destinations outside every pool unless
// CALICO_IPV4POOL_NAT_OUTGOING / CALICO_IPV6POOL_NAT_OUTGOING say false. A pool that exists
// already is never touched: it keeps the natOutgoing it was created with.
import type { Config } from '../config/config';
import type { Allocator } from '../ipam/allocator';
import { parseCidr } from '../ipam/cidr';
import { makePool, type Pool, type VxlanMode } from '../ipam/pool';
import { ConfigError, ConflictError, InvalidRequestError } from '../lib/errors';
import { logger } from '../lib/log';

const log = logger('daemon');

/** The configured default pools, validated: pure, so a bad value stops the daemon before it
 * touches anything. */
export function defaultPools(config: Config): Pool[] {
  const wanted: [string, 4 | 6, string | undefined, VxlanMode, boolean][] = [
    ['CALICO_IPV4POOL_CIDR', 4, config.defaultIpv4Pool, config.defaultIpv4PoolVxlanMode, config.defaultIpv4PoolNatOutgoing],
    ['CALICO_IPV6POOL_CIDR', 6, config.defaultIpv6Pool, 'Never', config.defaultIpv6PoolNatOutgoing],
  ];
  const pools: Pool[] = [];
  for (const [variable, family, cidr, vxlanMode, natOutgoing] of wanted) {
    if (cidr === undefined) continue;
    let pool: Pool;
    try {
      pool = makePool({ cidr, vxlanMode, natOutgoing });
    } catch (err) {
      if (err instanceof InvalidRequestError) throw new ConfigError(`${variable}: ${err.message}`);
      throw err;
    }
    if (parseCidr(pool.cidr).family !== family) throw new ConfigError(`${variable} must be an IPv${family} CIDR, got '${cidr}'`);
    pools.push(pool);
  }
  return pools;
}

/** Creates each pool whose family has no pool yet; pools that exist are left exactly as they are. */
export async function ensureDefaultPools(allocator: Pick<Allocator, 'listPools' | 'addPool'>, pools: Pool[]): Promise<void> {
  const existing = await allocator.listPools();
  for (const pool of pools) {
    const family = parseCidr(pool.cidr).family;
    if (existing.some((p) => parseCidr(p.cidr).family === family)) continue;
    try {
      await allocator.addPool({ ...pool, createdAt: new Date().toISOString() });
      log.info('created default IPv%d pool %s', family, pool.cidr);
    } catch (err) {
      // Another host created a pool at the same moment: theirs serves us too.
      if (!(err instanceof ConflictError)) throw err;
    }
  }
}
