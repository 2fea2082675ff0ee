// The daemon's one client of the Docker API (dockerode), and the few questions it asks Docker:
// is it there, what a network is called, which containers are on a network, which endpoints it
// knows. Docker may be calling us while we ask (CreateEndpoint, Join), so every call is short-timed
// by the client, and answers are read defensively: fields Docker leaves out are undefined here.
import Docker from 'dockerode';
import { errorMessage } from '../lib/errors';
import { logger } from '../lib/log';

const log = logger('docker');
/** Inside CreateEndpoint Docker waits for us: a name lookup must not hold it for long. */
const DEFAULT_TIMEOUT_MS = 5_000;

export interface ListedContainer {
  Id?: string;
  Labels?: Record<string, string> | null;
  NetworkSettings?: { Networks?: Record<string, { EndpointID?: string } | undefined> | null } | null;
}

interface InspectedContainer {
  Id?: string;
  Config?: { Labels?: Record<string, string> | null } | null;
  NetworkSettings?: ListedContainer['NetworkSettings'];
}

interface ListedNetwork {
  Id?: string;
  Driver?: string;
}

interface InspectedNetwork {
  Name?: unknown;
  Containers?: Record<string, { EndpointID?: string } | undefined> | null;
}

function isNotFound(err: unknown): boolean {
  return (err as { statusCode?: unknown }).statusCode === 404;
}

export class DockerApi {
  private readonly docker: Docker;
  /** Without a request timeout: an event stream stays open and may be quiet for hours. */
  private readonly streaming: Docker;

  constructor(readonly socketPath: string, timeoutMs = DEFAULT_TIMEOUT_MS) {
    this.docker = new Docker({ socketPath, timeout: timeoutMs });
    this.streaming = new Docker({ socketPath });
  }

  /** Docker's event stream, filtered (`type`, `event`, ... as in `docker events --filter`). */
  events(filters: Record<string, string[]>): Promise<NodeJS.ReadableStream> {
    return this.streaming.getEvents({ filters });
  }

  /** Rejects unless Docker answers a ping. */
  async ping(): Promise<void> {
    await this.docker.ping();
  }

  async answers(): Promise<boolean> {
    try {
      await this.ping();
      return true;
    } catch {
      return false;
    }
  }

  /** The name users know the network by; undefined (logged) when Docker cannot tell. */
  async networkName(networkId: string): Promise<string | undefined> {
    try {
      const info = (await this.docker.getNetwork(networkId).inspect()) as InspectedNetwork;
      return typeof info.Name === 'string' ? info.Name : undefined;
    } catch (err) {
      log.warn('cannot look up the name of network %s through Docker: %s', networkId.slice(0, 12), errorMessage(err));
      return undefined;
    }
  }

  /** Every container (running or not) on the network: a lock-free snapshot, usable while Docker
   * holds a container's lock (during Join). Rejects when Docker cannot be asked. */
  async containersOnNetwork(networkId: string): Promise<ListedContainer[]> {
    return (await this.docker.listContainers({ all: true, filters: { network: [networkId] } })) as ListedContainer[];
  }

  /** One container, in the list's shape; undefined when Docker has no such container. Docker
   * answers only once no operation holds the container's lock: asked at the network connect
   * event of a `docker run`, it answers when the start is done, endpoint IDs included. */
  async container(id: string): Promise<ListedContainer | undefined> {
    try {
      const info = (await this.docker.getContainer(id).inspect()) as InspectedContainer;
      return { Id: info.Id, Labels: info.Config?.Labels ?? null, NetworkSettings: info.NetworkSettings ?? null };
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
  }

  /** The endpoint IDs Docker knows on the networks of our driver (`driverName`; a managed plugin's
   * networks show it as `<name>:<tag>`), swarm networks and endpoints with no container (swarm's
   * load balancers) included, and every endpoint a container's own settings name. Two views,
   * because a network's inspection is built from libnetwork's store and skips an endpoint whose
   * entry it fails to read, while the container list comes from the daemon's memory: a record is
   * taken for stale only if neither names it (under heavy load the reconciler once removed records
   * of running containers; this is the suspected cause, not a proven one).
   * Undefined when Docker cannot be asked: the caller then takes no record as stale. */
  async knownEndpoints(driverName: string): Promise<ReadonlySet<string> | undefined> {
    try {
      const networks = (await this.docker.listNetworks()) as ListedNetwork[];
      if (networks.some((n) => typeof n.Id !== 'string')) return undefined;
      const ours = networks.filter((n) => n.Driver === driverName || n.Driver?.startsWith(`${driverName}:`) === true);
      const inspected = await Promise.all(ours.map(async (n): Promise<InspectedNetwork | undefined> => {
        try {
          return (await this.docker.getNetwork(n.Id ?? '').inspect()) as InspectedNetwork;
        } catch (err) {
          if (isNotFound(err)) return undefined; // removed since the listing: no endpoints left
          throw err;
        }
      }));
      const ids = new Set<string>();
      for (const c of await this.docker.listContainers({ all: true }) as ListedContainer[]) {
        for (const n of Object.values(c.NetworkSettings?.Networks ?? {})) {
          if (typeof n?.EndpointID === 'string' && n.EndpointID !== '') ids.add(n.EndpointID);
        }
      }
      for (const info of inspected) {
        for (const c of Object.values(info?.Containers ?? {})) {
          if (typeof c?.EndpointID === 'string' && c.EndpointID !== '') ids.add(c.EndpointID);
        }
      }
      return ids;
    } catch (err) {
      log.warn('cannot list Docker endpoints: %s', errorMessage(err));
      return undefined;
    }
  }
}
