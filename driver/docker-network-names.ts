// Resolves a Docker network's name through the Docker API (dockerode), so each network's profile
// can carry the name users know (and that ties one network together across hosts). Docker is
// calling us while it creates the endpoint, so the lookup is short-timed and its failure is not
// fatal: the endpoint then stays isolated until the label resolver learns the name.
import Docker from 'dockerode';
import { errorMessage } from '../lib/errors';
import { logger } from '../lib/log';
import type { NetworkNameLookup } from './network-driver';

const log = logger('docker');
const LOOKUP_TIMEOUT_MS = 5_000;

export class DockerNetworkNames implements NetworkNameLookup {
  private readonly docker: Docker;

  constructor(socketPath: string) {
    this.docker = new Docker({ socketPath, timeout: LOOKUP_TIMEOUT_MS });
  }

  async networkName(networkId: string): Promise<string | undefined> {
    try {
      const info = (await this.docker.getNetwork(networkId).inspect()) as { Name?: unknown };
      return typeof info.Name === 'string' ? info.Name : undefined;
    } catch (err) {
      log.warn('cannot look up the name of network %s through Docker: %s', networkId.slice(0, 12), errorMessage(err));
      return undefined;
    }
  }
}
