// The IpamDriver: Docker's view of our pools. Without --subnet a network is served by every
// enabled pool of its family (Docker sees 0.0.0.0/0 or ::/0); with --subnet it is served by
// exactly that pool. Addresses are /32 (/128): containers are routed, not bridged.
import type { Allocator, AssignIpResult } from '../ipam/allocator';
import { releasableBy, type Owner, type Requester } from '../ipam/block';
import { addressPart, containsIp, familyBits, formatIp, normalizeCidr, parseCidr, parseIp, type IpAddress, type IpFamily } from '../ipam/cidr';
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
import { route, type Route } from '../protocol/route';
import type { ReleasedAddress } from '../workload/endpoint-service';

export const LOCAL_ADDRESS_SPACE = 'CalicoLocalAddressSpace';
export const GLOBAL_ADDRESS_SPACE = 'CalicoGlobalAddressSpace';
/** PoolIDs for "any enabled pool of this family" (the names Calico's plugin used). */
export const ANY_POOL_ID: Record<IpFamily, string> = { 4: 'CalicoPoolIPv4', 6: 'CalicoPoolIPv6' };
/** The same in the global address space: the swarm manager's view of a network without --subnet. */
export const GLOBAL_ANY_POOL_ID: Record<IpFamily, string> = { 4: 'CalicoGlobalPoolIPv4', 6: 'CalicoGlobalPoolIPv6' };
/** A swarm node's view of such a network: it asks again, in the local space, for the pool the
 * manager stored, which is our `0.0.0.0/0` (`::/0`) answer. */
export const SWARM_NODE_POOL_ID: Record<IpFamily, string> = { 4: 'CalicoSwarmNodePoolIPv4', 6: 'CalicoSwarmNodePoolIPv6' };
/** Prefix of a global-space PoolID for a --subnet pool. */
const GLOBAL_CIDR_PREFIX = 'global:';
const ANY_CIDR: Record<IpFamily, string> = { 4: '0.0.0.0/0', 6: '::/0' };
const GATEWAY_TYPE = 'com.docker.network.gateway';
/** The holder of every address the swarm manager allocates: not a host (a manager's requests can
 * come from whichever host leads), and no host name can start with '@'. */
export const SWARM_OWNER_NODE = '@swarm';

export type AddressSpace = 'local' | 'global';

export interface PoolRef {
  readonly family: IpFamily;
  /** Undefined: any enabled pool of the family. */
  readonly cidr?: string;
  /** global: the swarm manager's requests; local: an engine's own (its networks, and a swarm
   * node asking again for what the manager allocated). Only the PoolID tells them apart:
   * ReleaseAddress carries no options. */
  readonly space: AddressSpace;
  /** A swarm node's view of a network without --subnet (SWARM_NODE_POOL_ID). */
  readonly swarmNode: boolean;
}

export function parsePoolId(poolId: string): PoolRef {
  for (const family of [4, 6] as const) {
    if (poolId === ANY_POOL_ID[family]) return { family, space: 'local', swarmNode: false };
    if (poolId === GLOBAL_ANY_POOL_ID[family]) return { family, space: 'global', swarmNode: false };
    if (poolId === SWARM_NODE_POOL_ID[family]) return { family, space: 'local', swarmNode: true };
  }
  const space: AddressSpace = poolId.startsWith(GLOBAL_CIDR_PREFIX) ? 'global' : 'local';
  let cidr: string;
  try {
    cidr = normalizeCidr(space === 'global' ? poolId.slice(GLOBAL_CIDR_PREFIX.length) : poolId);
  } catch {
    throw new InvalidRequestError(`unknown PoolID '${poolId}': expected ${ANY_POOL_ID[4]}, ${ANY_POOL_ID[6]}, a pool CIDR, or one of the swarm forms (${GLOBAL_ANY_POOL_ID[4]}, ${SWARM_NODE_POOL_ID[4]}, ${GLOBAL_CIDR_PREFIX}<cidr>, and their IPv6 names)`);
  }
  return { family: parseCidr(cidr).family, cidr, space, swarmNode: false };
}

/** Every address this driver hands out belongs to this handle, per PoolID, so a release is
 * matched against what this node asked for through Docker and never frees another holder's
 * address (another host, a calicoctl reservation, the swarm manager). */
export function dockerHandle(poolId: string): string {
  return `${DOCKER_HANDLE_PREFIX}${poolId}`;
}

const DOCKER_HANDLE_PREFIX = 'docker:';

/** Whether a handle is one this driver gives (an engine's own containers on this host). */
export function isDockerHandle(handle: string): boolean {
  return handle.startsWith(DOCKER_HANDLE_PREFIX);
}

/** The holder of the swarm manager's allocations under a global-space PoolID. */
export function swarmOwner(poolId: string): { readonly node: string; readonly handle: string } {
  return { node: SWARM_OWNER_NODE, handle: `swarm:${poolId}` };
}

/** What the driver needs from the endpoint side (workload/endpoint-service.ts). */
export interface StaleEndpoints {
  removeStaleNaming(released: ReleasedAddress): Promise<readonly string[]>;
}

export class IpamDriver {
  constructor(
    private readonly allocator: Allocator,
    private readonly node: string,
    private readonly pluginName: string,
    private readonly endpoints: StaleEndpoints,
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
    const global = req.AddressSpace === GLOBAL_ADDRESS_SPACE;
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
    // A swarm node asks again for the pool the manager stored: for a network without --subnet,
    // our own `0.0.0.0/0` answer.
    const swarmNode = !global && req.Pool !== '' && normalizeCidr(req.Pool, '--subnet') === ANY_CIDR[family];
    if (req.Pool === '' || swarmNode) {
      const enabled = (await this.allocator.listPools()).filter((p) => !p.disabled && poolFamily(p) === family);
      if (enabled.length === 0) {
        throw new NotFoundError(`no enabled IPv${family} pool: add one with 'calicoctl pool add <cidr>'`);
      }
      const poolId = global ? GLOBAL_ANY_POOL_ID[family] : swarmNode ? SWARM_NODE_POOL_ID[family] : ANY_POOL_ID[family];
      return { PoolID: poolId, Pool: ANY_CIDR[family], Data: data };
    }
    const cidr = normalizeCidr(req.Pool, '--subnet');
    if (parseCidr(cidr).family !== family) {
      throw new InvalidRequestError(`--subnet ${req.Pool} is not an IPv${family} CIDR`);
    }
    const pool = await this.findPool(cidr);
    return { PoolID: global ? `${GLOBAL_CIDR_PREFIX}${pool.cidr}` : pool.cidr, Pool: pool.cidr, Data: data };
  }

  async releasePool(req: ReleasePoolRequest): Promise<object> {
    // Pools belong to the operator (calicoctl), not to a Docker network: nothing to free.
    parsePoolId(req.PoolID);
    return {};
  }

  async requestAddress(req: RequestAddressRequest): Promise<RequestAddressResponse> {
    const ref = parsePoolId(req.PoolID);
    const bits = familyBits(ref.family);
    const requested = req.Address === '' ? undefined : parseIp(addressPart(req.Address), '--ip');
    if (requested !== undefined && requested.family !== ref.family) throw new InvalidRequestError(`--ip ${req.Address} is not an IPv${ref.family} address`);
    if (req.Options[REQUEST_ADDRESS_TYPE] === GATEWAY_TYPE) return this.gateway(ref, requested);
    if (requested !== undefined && ref.cidr !== undefined && !containsIp(parseCidr(ref.cidr), requested)) {
      throw new InvalidRequestError(`--ip ${req.Address} is outside the network's subnet ${ref.cidr}`);
    }
    const owner: Owner = ref.space === 'global'
      ? { ...swarmOwner(req.PoolID), kind: 'container' }
      : { node: this.node, handle: dockerHandle(req.PoolID), kind: 'container', allocatedAt: new Date().toISOString() };
    if (requested === undefined) {
      const { ip } = await this.allocator.autoAssign({ family: ref.family, ...(ref.cidr !== undefined && { pools: [ref.cidr] }), owner });
      return { Address: `${ip}/${bits}`, Data: {} };
    }
    const ip = formatIp(requested);
    let assigned: AssignIpResult;
    try {
      assigned = await this.allocator.assignIp({ ip, owner });
    } catch (err) {
      if (err instanceof ConflictError && ref.space === 'local' && (ref.swarmNode || ref.cidr !== undefined) && (await this.heldBySwarm(ip))) {
        // A swarm node asking again for an address the manager allocated (a task's, a
        // load balancer's): it is the manager's, and stays the manager's when the node releases.
        return { Address: `${ip}/${bits}`, Data: {} };
      }
      throw err;
    }
    // The allocator treats a holder asking again as a replay, which the swarm manager needs (it
    // asks again for what it holds when it restores its state); through an engine's own API a
    // second --ip for the same address is a second container.
    if (assigned.alreadyOwned && ref.space === 'local' && !ref.swarmNode) throw new ConflictError(`address ${assigned.ip} is already in use by another container`);
    return { Address: `${assigned.ip}/${bits}`, Data: {} };
  }

  /** Calico workloads route through their host, so a network has no gateway address: pool data
   * tells Docker so (`0.0.0.0/0`). A swarm manager may still ask for one, and a swarm node asks
   * again for the `0.0.0.0` the manager stored: both get `0.0.0.0/0` (`::/0`), which takes no
   * address. Only a real address (`--gateway`) is refused. */
  private gateway(ref: PoolRef, requested: IpAddress | undefined): RequestAddressResponse {
    if (requested !== undefined && formatIp(requested) !== addressPart(ANY_CIDR[ref.family])) {
      throw new InvalidRequestError(
        `--gateway is not supported by ${this.pluginName}: calico containers route through their host (gateway 169.254.1.1, or the host's link-local address for IPv6)`,
      );
    }
    return { Address: ANY_CIDR[ref.family], Data: {} };
  }

  private async heldBySwarm(ip: string): Promise<boolean> {
    return (await this.allocator.findAllocation(ip))?.owner.node === SWARM_OWNER_NODE;
  }

  async releaseAddress(req: ReleaseAddressRequest): Promise<object> {
    const ref = parsePoolId(req.PoolID);
    const ip = parseIp(addressPart(req.Address), 'Address');
    if (ip.family !== ref.family) throw new InvalidRequestError(`Address ${req.Address} does not belong to pool ${req.PoolID}`);
    // The no-gateway answer holds nothing.
    if (formatIp(ip) === addressPart(ANY_CIDR[ref.family])) return {};
    const text = formatIp(ip);
    if (ref.space === 'global') {
      // The swarm manager's: freed when the manager decides, which need not follow the node's
      // DeleteEndpoint (the task may run on another host, or its engine be slower); a local task
      // endpoint naming the address may be live, so no endpoint is looked at.
      await this.allocator.release({ ip: text, requester: swarmOwner(req.PoolID) });
      return {};
    }
    const requester: Requester = { node: this.node, handle: dockerHandle(req.PoolID) };
    const held = await this.allocator.findAllocation(text);
    // Only what this release frees can leave a stale record behind: an address already free, or
    // held by someone else (a swarm node releasing the manager's address, another host, a
    // calicoctl reservation), is left alone with whatever endpoint names it.
    if (held === undefined || !releasableBy(held.owner, requester)) {
      await this.allocator.release({ ip: text, requester });
      return {};
    }
    // Docker deletes an endpoint before releasing its address; restoring after a restart it
    // releases the old endpoints' addresses without deleting them. Their records go first, so the
    // address is never free while a record still puts it in its old network's ipsets. If one
    // cannot be removed this throws and the address stays held (the reconciler retries both).
    await this.endpoints.removeStaleNaming({
      ip: text,
      pool: ref.cidr ?? ANY_CIDR[ref.family],
      allocationEndpoint: held.owner.endpointId,
      reason: `Docker released its address ${text} without deleting it (restart)`,
    });
    await this.allocator.release({ ip: text, requester });
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
