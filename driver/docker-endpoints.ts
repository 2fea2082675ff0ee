// Asks Docker which endpoints it knows, for the reconciler: every network's endpoints (swarm
// networks included: a node lists the swarm networks it has tasks on), each network inspected for
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

  constructor(socketPath: string) {
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
      const networks = (await this.docker.listNetworks()) as { Id?: string }[];
      const ids = new Set<string>();
      for (const n of networks) {
        if (typeof n.Id !== 'string') return undefined;
        let info: InspectedNetwork;
        try {
          info = (await this.docker.getNetwork(n.Id).inspect()) as InspectedNetwork;
        } catch (err) {
          // Removed since the listing: it has no endpoints left.
          if ((err as { statusCode?: unknown }).statusCode === 404) continue;
          throw err;
        }
        for (const c of Object.values(info.Containers ?? {})) {
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
