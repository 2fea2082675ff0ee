// The IpamDriver: Docker's view of our pools. Without --subnet a network is served by every
// enabled pool of its family (Docker sees 0.0.0.0/0 or ::/0); with --subnet it is served by
// exactly that pool. Addresses are /32 (/128): containers are routed, not bridged.
import type { Allocator } from '../ipam/allocator';
import type { Owner, Requester } from '../ipam/block';
import { addressPart, containsIp, familyBits, formatIp, normalizeCidr, parseCidr, parseIp, type IpFamily } from '../ipam/cidr';
import { type Pool, poolFamily } from '../ipam/pool';
import { ConflictError, InvalidRequestError, NotFoundError } from '../lib/errors';
import {
  GATEWAY_DATA_KEY,
  REQUEST_ADDRESS_TYPE,
  ReleaseAddressRequest,
  ReleasePoolRequest,
  RequestAddressRequest,
  RequestPoolRequest,
  type RequestAddressResponse,
  type RequestPoolResponse,
} from '../protocol/ipam-driver-api';
import { route, type Route } from '../protocol/plugin-server';

export const LOCAL_ADDRESS_SPACE = 'CalicoLocalAddressSpace';
export const GLOBAL_ADDRESS_SPACE = 'CalicoGlobalAddressSpace';
/** PoolIDs for "any enabled pool of this family" (the names Calico's plugin used). */
export const ANY_POOL_ID: Record<IpFamily, string> = { 4: 'CalicoPoolIPv4', 6: 'CalicoPoolIPv6' };
const ANY_CIDR: Record<IpFamily, string> = { 4: '0.0.0.0/0', 6: '::/0' };
const GATEWAY_TYPE = 'com.docker.network.gateway';

export interface PoolRef {
  readonly family: IpFamily;
  /** Undefined: any enabled pool of the family. */
  readonly cidr?: string;
}

export function parsePoolId(poolId: string): PoolRef {
  if (poolId === ANY_POOL_ID[4]) return { family: 4 };
  if (poolId === ANY_POOL_ID[6]) return { family: 6 };
  let cidr: string;
  try {
    cidr = normalizeCidr(poolId);
  } catch {
    throw new InvalidRequestError(`unknown PoolID '${poolId}': expected ${ANY_POOL_ID[4]}, ${ANY_POOL_ID[6]} or a pool CIDR`);
  }
  return { family: parseCidr(cidr).family, cidr };
}

/** Every address this driver hands out belongs to this handle, per PoolID, so a release is
 * matched against what this node asked for through Docker and never frees another holder's
 * address (another host, a calicoctl reservation). */
export function dockerHandle(poolId: string): string {
  return `docker:${poolId}`;
}

export class IpamDriver {
  constructor(
    private readonly allocator: Allocator,
    private readonly node: string,
    private readonly pluginName: string,
  ) {}

  getCapabilities(): object {
    return { RequiresMACAddress: false, RequiresRequestReplay: false };
  }

  getDefaultAddressSpaces(): object {
    return { LocalDefaultAddressSpace: LOCAL_ADDRESS_SPACE, GlobalDefaultAddressSpace: GLOBAL_ADDRESS_SPACE };
  }

  async requestPool(req: RequestPoolRequest): Promise<RequestPoolResponse> {
    if (req.AddressSpace !== LOCAL_ADDRESS_SPACE && req.AddressSpace !== GLOBAL_ADDRESS_SPACE) {
      throw new InvalidRequestError(`unknown address space '${req.AddressSpace}': ${this.pluginName} serves ${LOCAL_ADDRESS_SPACE} and ${GLOBAL_ADDRESS_SPACE}`);
    }
    if (req.SubPool !== '') {
      throw new InvalidRequestError(
        `--ip-range is not supported by ${this.pluginName}: addresses come from the pool's blocks; use --subnet <pool CIDR> to pick a pool, or --ip on docker run for a fixed address`,
      );
    }
    const options = Object.keys(req.Options);
    if (options.length > 0) {
      throw new InvalidRequestError(`unsupported --ipam-opt ${options.map((o) => `'${o}'`).join(', ')}: ${this.pluginName} takes no IPAM options`);
    }
    const family: IpFamily = req.V6 ? 6 : 4;
    const data = { [GATEWAY_DATA_KEY]: ANY_CIDR[family] };
    if (req.Pool === '') {
      const enabled = (await this.allocator.listPools()).filter((p) => !p.disabled && poolFamily(p) === family);
      if (enabled.length === 0) {
        throw new NotFoundError(`no enabled IPv${family} pool: add one with 'calicoctl pool add <cidr>'`);
      }
      return { PoolID: ANY_POOL_ID[family], Pool: ANY_CIDR[family], Data: data };
    }
    const cidr = normalizeCidr(req.Pool, '--subnet');
    if (parseCidr(cidr).family !== family) {
      throw new InvalidRequestError(`--subnet ${req.Pool} is not an IPv${family} CIDR`);
    }
    const pool = await this.findPool(cidr);
    return { PoolID: pool.cidr, Pool: pool.cidr, Data: data };
  }

  async releasePool(req: ReleasePoolRequest): Promise<object> {
    // Pools belong to the operator (calicoctl), not to a Docker network: nothing to free.
    parsePoolId(req.PoolID);
    return {};
  }

  async requestAddress(req: RequestAddressRequest): Promise<RequestAddressResponse> {
    const ref = parsePoolId(req.PoolID);
    if (req.Options[REQUEST_ADDRESS_TYPE] === GATEWAY_TYPE) {
      throw new InvalidRequestError(
        `--gateway is not supported by ${this.pluginName}: calico containers route through their host (gateway 169.254.1.1, or the host's link-local address for IPv6)`,
      );
    }
    const owner: Owner = { node: this.node, handle: dockerHandle(req.PoolID), kind: 'container' };
    const bits = familyBits(ref.family);
    if (req.Address !== '') {
      const ip = parseIp(addressPart(req.Address), '--ip');
      if (ip.family !== ref.family) throw new InvalidRequestError(`--ip ${req.Address} is not an IPv${ref.family} address`);
      if (ref.cidr !== undefined && !containsIp(parseCidr(ref.cidr), ip)) {
        throw new InvalidRequestError(`--ip ${req.Address} is outside the network's subnet ${ref.cidr}`);
      }
      const assigned = await this.allocator.assignIp({ ip: formatIp(ip), owner });
      // The allocator treats a holder asking again as a replay (swarm needs that); through
      // Docker's local API a second --ip for the same address is a second container.
      if (assigned.alreadyOwned) throw new ConflictError(`address ${assigned.ip} is already in use by another container`);
      return { Address: `${assigned.ip}/${bits}`, Data: {} };
    }
    const { ip } = await this.allocator.autoAssign({ family: ref.family, ...(ref.cidr !== undefined && { pools: [ref.cidr] }), owner });
    return { Address: `${ip}/${bits}`, Data: {} };
  }

  async releaseAddress(req: ReleaseAddressRequest): Promise<object> {
    const ref = parsePoolId(req.PoolID);
    const ip = parseIp(addressPart(req.Address), 'Address');
    if (ip.family !== ref.family) throw new InvalidRequestError(`Address ${req.Address} does not belong to pool ${req.PoolID}`);
    const requester: Requester = { node: this.node, handle: dockerHandle(req.PoolID) };
    // Releasing an address that is already free (Docker retries, a second ReleaseAddress) is fine;
    // one held by someone else is left alone.
    await this.allocator.release({ ip: formatIp(ip), requester });
    return {};
  }

  private async findPool(cidr: string): Promise<Pool> {
    const pool = await this.allocator.getPool(cidr);
    if (pool === undefined) {
      const known = (await this.allocator.listPools()).map((p) => p.cidr).join(', ') || 'none';
      throw new NotFoundError(`no calico IP pool matches --subnet ${cidr} (pools: ${known}); add it with 'calicoctl pool add ${cidr}' or leave out --subnet`);
    }
    if (pool.disabled) throw new ConflictError(`IP pool ${cidr} is disabled; enable it or choose another --subnet`);
    return pool;
  }

  routes(): Route[] {
    return [
      route('IpamDriver.GetCapabilities', null, () => this.getCapabilities()),
      route('IpamDriver.GetDefaultAddressSpaces', null, () => this.getDefaultAddressSpaces()),
      route('IpamDriver.RequestPool', RequestPoolRequest, (r) => this.requestPool(r)),
      route('IpamDriver.ReleasePool', ReleasePoolRequest, (r) => this.releasePool(r)),
      route('IpamDriver.RequestAddress', RequestAddressRequest, (r) => this.requestAddress(r)),
      route('IpamDriver.ReleaseAddress', ReleaseAddressRequest, (r) => this.releaseAddress(r)),
    ];
  }
}
