// The churn benchmark (scripts/bench-churn.ts, 500 containers) in small: 40 containers created,
// started and removed by 8 parallel clients against a real isolated dockerd and the real plugin;
// no address handed out twice (Docker's view and the datastore's) and nothing left at the end.
import test from 'ava';
import { randomBytes } from 'node:crypto';
import Docker from 'dockerode';
import { churnReport } from '../../scripts/bench-churn';
import { baseline, churn, leftovers } from '../harness/churn';
import { createNetwork, removeNetwork } from '../harness/containers';
import { startDockerd } from '../harness/dockerd';
import { importTestImage } from '../harness/image';
import { startPlugin } from '../harness/plugin';
import { reserveTestSubnet } from '../harness/test-subnets';

const CONTAINERS = 40;
const CLIENTS = 8;
const WINDOW = 2;

test('40 containers churned by 8 parallel clients: no duplicate address, nothing left', async (t) => {
  t.timeout(150_000);
  const dockerd = await startDockerd();
  t.teardown(() => dockerd.stop());
  const image = `calico-churn-${randomBytes(3).toString('hex')}:latest`;
  await importTestImage(dockerd.socketPath, image);
  const pool = await reserveTestSubnet();
  const plugin = await startPlugin({ dockerSocket: dockerd.socketPath, ipv4Pool: pool });
  const docker = new Docker({ socketPath: dockerd.socketPath });
  const name = `churn-${randomBytes(3).toString('hex')}`;
  // Teardowns run last-registered first: containers and network go before the plugin.
  t.teardown(() => plugin.cleanup());
  const base = await baseline(plugin);
  const net = await createNetwork(docker, { name, driver: plugin.networkDriver, ipamDriver: plugin.ipamDriver });
  t.teardown(async () => {
    const all = await docker.listContainers({ all: true });
    await Promise.all(all.map((x) => docker.getContainer(x.Id).remove({ force: true }).catch(() => undefined)));
    await net.remove().catch(() => undefined);
  });

  const result = await churn({ docker, image, plugin, network: name, containers: CONTAINERS, clients: CLIENTS, window: WINDOW, sampleIntervalMs: 250 });
  await removeNetwork(net);
  const left = await leftovers(plugin, [pool.replace(/0\/24$/, '')], base);
  t.log(churnReport(result, left, CLIENTS, WINDOW).join('\n'));

  t.deepEqual(result.failures, []);
  t.is(result.started, CONTAINERS);
  t.is(result.removed, CONTAINERS);
  t.deepEqual(result.duplicates, []);
  t.deepEqual(result.mismatches, []);
  // The sampler did look while containers were alive.
  t.true(result.samples >= 2, `only ${result.samples} datastore samples`);
  t.true(result.maxLive > CLIENTS, `at most ${result.maxLive} containers alive at once`);
  t.deepEqual(left, { endpoints: [], allocations: [], networks: [], profiles: [], veths: [], routes: [], chains: [], sets: [] , repairs: [] }, plugin.output().slice(-4000));
});
