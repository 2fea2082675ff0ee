// Child process for the reaper test: starts a one-host cluster with a running container on a
// calico network, prints "<cluster id>" and waits to be SIGKILLed (no stop(), no exit hook).
import { runContainer } from '../containers.js';
import { startCluster } from './cluster.js';

async function main(): Promise<void> {
  const cluster = await startCluster({ hosts: 1 });
  const host = cluster.hosts[0];
  if (host === undefined) throw new Error('no host');
  await host.run(['docker', 'network', 'create', '-d', 'calico', '--ipam-driver', 'calico-ipam', 'net1']);
  await runContainer(host.docker, { image: cluster.image, network: 'net1' });
  process.stdout.write(`${cluster.id}\n`);
  setInterval(() => undefined, 60_000);
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? err.stack ?? err.message : String(err)}\n`);
  process.exit(1);
});
