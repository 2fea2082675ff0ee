// etcd outages and a secured etcd, end to end: a real isolated dockerd, the real plugin binary and
// real etcd processes. Containers started while etcd hangs each fail within CALICO_DATASTORE_TIMEOUT
// with an error naming etcd and starts once etcd is back; the plugin runs against an etcd that
// requires client certificates and a user (certificates made here with openssl).
import test, { type ExecutionContext } from 'ava';
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import Docker from 'dockerode';
import { Etcd3, Range } from 'etcd3';
import { run } from '../../dataplane/exec';
import { linkExists } from '../../dataplane/veth';
import { addressOn, createNetwork, removeQuietly, runContainer } from '../harness/containers';
import { startEtcd } from '../harness/etcd';
import { dockerWithImage, fileFixture } from '../harness/fixture';
import { freePort, getLocal, metric } from '../harness/local-http';
import { startPlugin, type Plugin } from '../harness/plugin';
import { reserveTestSubnet } from '../harness/test-subnets';
import { makeTestCertificates } from '../harness/tls-certs';

const c = fileFixture(test, (onTeardown) => dockerWithImage(onTeardown));

/** A network of a plugin, with the containers the test adds to `containers`, removed at the end. */
async function network(t: ExecutionContext, plugin: Plugin): Promise<{ name: string; containers: Docker.Container[] }> {
  const name = `net-${randomBytes(3).toString('hex')}`;
  const net = await createNetwork(c().docker, { name, driver: plugin.networkDriver, ipamDriver: plugin.ipamDriver });
  const containers: Docker.Container[] = [];
  t.teardown(() => removeQuietly(containers, [net]));
  return { name, containers };
}

const TIMEOUT_SECONDS = 2;

test.serial('etcd hung (SIGSTOP) during container starts: each fails within CALICO_DATASTORE_TIMEOUT naming etcd, and starts after SIGCONT', async (t) => {
  const etcd = await startEtcd({ inMemory: true });
  t.teardown(() => etcd.stop());
  const pool = await reserveTestSubnet();
  const healthPort = await freePort();
  const plugin = await startPlugin({
    dockerSocket: c().dockerd.socketPath,
    ipv4Pool: pool,
    etcdEndpoints: etcd.endpoints,
    env: { CALICO_DATASTORE_TIMEOUT: String(TIMEOUT_SECONDS), CALICO_HEALTH_LISTEN: `127.0.0.1:${healthPort}` },
  });
  t.teardown(() => plugin.cleanup());
  const net = await network(t, plugin);
  const first = await runContainer(c().docker, { image: c().image, network: net.name });
  net.containers.push(first);
  const firstAddr = await addressOn(first, net.name);
  const kernelOfFirst = async (): Promise<{ veth: boolean; route: boolean }> => ({
    veth: await linkExists(plugin.hostIf(firstAddr.endpointId)),
    route: JSON.parse((await run('ip', ['-j', '-4', 'route', 'show', 'exact', firstAddr.ipv4], 'route')).stdout || '[]').length === 1,
  });
  t.deepEqual(await kernelOfFirst(), { veth: true, route: true });

  // Three starts at once on three networks (Docker sends one network's address requests one at a
  // time; different networks' at once): each has its own bound, not one bound after another in
  // the plugin's address queue.
  const nets = [net, await network(t, plugin), await network(t, plugin)];
  const starting = await Promise.all(nets.map(async (n) => {
    const container = await c().docker.createContainer({ Image: c().image, Cmd: ['sleep', '3600'], HostConfig: { NetworkMode: n.name } });
    n.containers.push(container);
    return { container, network: n.name };
  }));
  etcd.signal('SIGSTOP');
  let outcomes: { ms: number; failure: unknown }[];
  try {
    outcomes = await Promise.all(starting.map(async ({ container }) => {
      const t0 = Date.now();
      try {
        await container.start();
        return { ms: Date.now() - t0, failure: undefined };
      } catch (err) {
        return { ms: Date.now() - t0, failure: err };
      }
    }));
  } finally {
    etcd.signal('SIGCONT');
  }
  for (const [i, { ms, failure }] of outcomes.entries()) {
    const message = failure instanceof Error ? failure.message : String(failure);
    t.log(`start ${i} failed after ${ms} ms: ${message}`);
    t.truthy(failure, `start ${i} fails while etcd hangs`);
    t.regex(message, /etcd at http:\/\/127\.0\.0\.1:\d+/, `start ${i}: the error names the datastore`);
    // Docker adds its own start and clean-up (seconds on a busy machine): still far from the
    // 30 s Docker would wait for a plugin that never answers.
    t.true(ms < TIMEOUT_SECONDS * 1000 + 6_000, `start ${i} failed after ${ms} ms`);
  }
  // The bound is the plugin's: every request it answered took at most the timeout (the histogram's
  // next bucket is 2.5 s), and the ones that met the hung etcd failed.
  const metrics = (await getLocal(healthPort, '/metrics')).body;
  t.true(metric(metrics, 'calico_libnetwork_requests_total', { method: 'IpamDriver.RequestAddress', result: 'error' }) >= starting.length, 'RequestAddress failed');
  const slow = metrics
    .split('\n')
    .filter((l) => l.startsWith('calico_libnetwork_request_seconds_count{'))
    .map((l) => /method="([^"]+)"/.exec(l)?.[1] ?? '?')
    .map((method) => ({ method, over: metric(metrics, 'calico_libnetwork_request_seconds_count', { method }) - metric(metrics, 'calico_libnetwork_request_seconds_bucket', { method, le: '2.5' }) }))
    .filter((m) => m.over > 0);
  t.deepEqual(slow, [], 'no request took longer than the bound');
  // The agent kept what it had programmed: the running container's veth and route stay.
  t.deepEqual(await kernelOfFirst(), { veth: true, route: true }, 'kernel state kept through the outage');

  // Back: the same containers start (etcd3 holds a member back for up to 5 s after failures).
  for (const { container, network: name } of starting) {
    const deadline = Date.now() + 15_000;
    for (;;) {
      try {
        await container.start();
        break;
      } catch (err) {
        if (Date.now() > deadline) throw err;
        await new Promise((r) => setTimeout(r, 500));
      }
    }
    const addr = await addressOn(container, name);
    t.true(addr.ipv4.startsWith(pool.replace(/0\/24$/, '')), `address ${addr.ipv4} from ${pool}`);
  }
});

test.serial('etcd with TLS client certificates and authentication, end to end', async (t) => {
  const certs = await makeTestCertificates('calico-libnetwork-client');
  t.teardown(() => certs.cleanup());
  const etcd = await startEtcd({ inMemory: true, tls: certs });
  t.teardown(() => etcd.stop());
  const credentials = {
    rootCertificate: await readFile(certs.caFile),
    privateKey: await readFile(certs.clientKeyFile),
    certChain: await readFile(certs.clientCertFile),
  };
  const prefix = `/calico-tls-${randomBytes(3).toString('hex')}`;
  const password = randomBytes(12).toString('hex');
  const rootPassword = randomBytes(12).toString('hex');
  // A user that may use only the plugin's prefix; root exists because etcd requires it for auth.
  const admin = new Etcd3({ hosts: etcd.endpoints, credentials });
  try {
    await admin.user('root').create(rootPassword);
    await admin.user('root').addRole('root');
    const role = await admin.role('calico-libnetwork').create();
    await role.grant({ permission: 'Readwrite', range: Range.prefix(`${prefix}/`) });
    await admin.user('calico-libnetwork').create(password);
    await admin.user('calico-libnetwork').addRole('calico-libnetwork');
    await admin.auth.authEnable();
  } finally {
    admin.close();
  }
  // Auth is on: without a user, the same certificate reads nothing.
  const anonymous = new Etcd3({ hosts: etcd.endpoints, credentials });
  t.teardown(() => anonymous.close());
  await t.throwsAsync(anonymous.get(`${prefix}/x`).string(), { message: /permission denied|user name is empty|authentication/i });

  const pool = await reserveTestSubnet();
  const plugin = await startPlugin({
    dockerSocket: c().dockerd.socketPath,
    ipv4Pool: pool,
    etcdEndpoints: etcd.endpoints,
    env: {
      CALICO_DATASTORE_PREFIX: prefix,
      ETCD_CA_CERT_FILE: certs.caFile,
      ETCD_CERT_FILE: certs.clientCertFile,
      ETCD_KEY_FILE: certs.clientKeyFile,
      ETCD_USERNAME: 'calico-libnetwork',
      ETCD_PASSWORD: password,
    },
  });
  t.teardown(() => plugin.cleanup());
  t.regex(etcd.endpoints[0] ?? '', /^https:/);
  const net = await network(t, plugin);
  const container = await runContainer(c().docker, { image: c().image, network: net.name });
  net.containers.push(container);
  const addr = await addressOn(container, net.name);
  t.true(addr.ipv4.startsWith(pool.replace(/0\/24$/, '')), `address ${addr.ipv4} from ${pool}`);

  // The plugin's records are in the secured etcd, readable by its user.
  const reader = new Etcd3({ hosts: etcd.endpoints, credentials, auth: { username: 'calico-libnetwork', password } });
  t.teardown(() => reader.close());
  const keys = await reader.getAll().prefix(`${prefix}/`).keys();
  t.true(keys.some((k) => k.includes(addr.endpointId)), `endpoint ${addr.endpointId} recorded: ${keys.join(' ')}`);
});
