// Asks Docker which endpoints it knows, for the reconciler: the endpoints of our driver's networks
// (swarm networks included: a node lists the swarm networks it has tasks on), inspected at once for
// its endpoint IDs (`Containers`, which also lists endpoints with no container such as swarm's
// load balancers). Any failure but a network removed meanwhile means "Docker cannot be asked":
// undefined, and the reconciler then takes no record as stale.
import Docker from 'dockerode';
import { errorMessage } from '../lib/errors';
import { logger } from '../lib/log';

const log = logger('docker');
const REQUEST_TIMEOUT_MS = 10_000;

interface InspectedNetwork {
  Id?: string;
  Containers?: Record<string, { EndpointID?: string } | undefined> | null;
}

export class DockerEndpoints {
  private readonly docker: Docker;

  /** `driverName`: our network driver's name (a managed plugin's networks show it as
   * `<name>:<tag>`); other drivers' networks hold none of our endpoints and are not read. */
  constructor(socketPath: string, private readonly driverName: string) {
    this.docker = new Docker({ socketPath, timeout: REQUEST_TIMEOUT_MS });
  }

  async ready(): Promise<boolean> {
    try {
      await this.docker.ping();
      return true;
    } catch {
      return false;
    }
  }

  async knownEndpoints(): Promise<ReadonlySet<string> | undefined> {
    try {
      const networks = (await this.docker.listNetworks()) as { Id?: string; Driver?: string }[];
      if (networks.some((n) => typeof n.Id !== 'string')) return undefined;
      const ours = networks.filter((n) => n.Driver === this.driverName || n.Driver?.startsWith(`${this.driverName}:`) === true);
      const inspected = await Promise.all(ours.map(async (n): Promise<InspectedNetwork | undefined> => {
        try {
          return (await this.docker.getNetwork(n.Id ?? '').inspect()) as InspectedNetwork;
        } catch (err) {
          // Removed since the listing: it has no endpoints left.
          if ((err as { statusCode?: unknown }).statusCode === 404) return undefined;
          throw err;
        }
      }));
      const ids = new Set<string>();
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
