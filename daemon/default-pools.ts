// On first start a host with no pool of a family gets the configured default pool (Calico's
// behaviour), so `docker network create -d calico --ipam-driver calico-ipam net1` works at once.
import type { Config } from '../config/config';
import type { Allocator } from '../ipam/allocator';
import { parseCidr } from '../ipam/cidr';
import { makePool } from '../ipam/pool';
import { ConfigError, ConflictError, InvalidRequestError } from '../lib/errors';
import { logger } from '../lib/log';

const log = logger('daemon');

export async function ensureDefaultPools(allocator: Allocator, config: Config): Promise<void> {
  const wanted: [string, string | undefined][] = [
    ['CALICO_IPV4POOL_CIDR', config.defaultIpv4Pool],
    ['CALICO_IPV6POOL_CIDR', config.defaultIpv6Pool],
  ];
  const existing = await allocator.listPools();
  for (const [variable, cidr] of wanted) {
    if (cidr === undefined) continue;
    let pool;
    try {
      pool = makePool({ cidr, createdAt: new Date().toISOString() });
    } catch (err) {
      if (err instanceof InvalidRequestError) throw new ConfigError(`${variable}: ${err.message}`);
      throw err;
    }
    const family = parseCidr(pool.cidr).family;
    if ((variable === 'CALICO_IPV4POOL_CIDR') !== (family === 4)) {
      throw new ConfigError(`${variable} must be an IPv${variable === 'CALICO_IPV4POOL_CIDR' ? 4 : 6} CIDR, got '${cidr}'`);
    }
    if (existing.some((p) => parseCidr(p.cidr).family === family)) continue;
    try {
      await allocator.addPool(pool);
      log.info('created default IPv%d pool %s', family, pool.cidr);
    } catch (err) {
      // Another host created a pool at the same moment: theirs serves us too.
      if (!(err instanceof ConflictError)) throw err;
    }
  }
}
