// Health and metrics of the real daemon against a real, isolated dockerd: liveness and readiness
// answer, the metrics move as containers come and go, and a plugin pointed at a Docker that does
// not answer says so in its log and in readiness.
import test from 'ava';
import { randomBytes } from 'node:crypto';
import Docker from 'dockerode';
import { createNetwork, removeQuietly, runContainer } from '../harness/containers';
import { startDockerd } from '../harness/dockerd';
import { importTestImage } from '../harness/image';
import { freePort, getLocal as get, metric } from '../harness/local-http';
import { startPlugin, type Plugin } from '../harness/plugin';
import { reserveTestSubnet } from '../harness/test-subnets';

const teardowns: (() => Promise<unknown>)[] = [];
test.after.always(async () => {
  for (const td of teardowns.reverse()) await td().catch((err: unknown) => console.error('teardown:', err));
});

async function until<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe().catch(() => undefined);
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function startWithHealth(dockerSocket: string, ipv4Pool?: string): Promise<{ plugin: Plugin; port: number }> {
  const port = await freePort();
  const plugin = await startPlugin({ dockerSocket, ...(ipv4Pool !== undefined && { ipv4Pool }), env: { CALICO_HEALTH_LISTEN: `127.0.0.1:${port}` } });
  teardowns.push(() => plugin.cleanup());
  await until('liveness', async () => ((await get(port, '/liveness')).status === 200 ? true : undefined));
  return { plugin, port };
}

test.serial('health and metrics answer and move as containers come and go', async (t) => {
  const dockerd = await startDockerd();
  teardowns.push(() => dockerd.stop());
  const docker = new Docker({ socketPath: dockerd.socketPath });
  const image = await importTestImage(dockerd.socketPath, `calico-test-${randomBytes(3).toString('hex')}:latest`);
  const { plugin, port } = await startWithHealth(dockerd.socketPath, await reserveTestSubnet());

  const live = await get(port, '/liveness');
  t.is(live.status, 200);
  const ready = await until('readiness 200', async () => {
    const r = await get(port, '/readiness');
    return r.status === 200 ? r : undefined;
  });
  const readyBody = JSON.parse(ready.body) as { checks: Record<string, { ok: boolean }>; failing: string[] };
  t.deepEqual(Object.keys(readyBody.checks).sort(), ['agent', 'datastore', 'docker']);
  t.deepEqual(readyBody.failing, []);

  const scrape = async (): Promise<string> => {
    const r = await get(port, '/metrics');
    t.is(r.status, 200);
    return r.body;
  };
  const before = await scrape();
  t.regex(before, /# TYPE calico_libnetwork_requests_total counter/);
  t.regex(before, /# TYPE calico_libnetwork_request_seconds histogram/);
  t.regex(before, /# TYPE calico_libnetwork_dataplane_apply_time_seconds histogram/);
  t.true(metric(before, 'calico_libnetwork_dataplane_apply_time_seconds_count', { manager: 'policy' }) >= 1, 'the first sync was timed');
  t.true(metric(before, 'calico_libnetwork_iptables_rules') > 0, 'rules programmed');
  t.is(metric(before, 'calico_libnetwork_active_local_endpoints'), 0);

  const name = `net-${randomBytes(3).toString('hex')}`;
  const net = await createNetwork(docker, { name, driver: plugin.networkDriver, ipamDriver: plugin.ipamDriver });
  const containers: Docker.Container[] = [];
  t.teardown(() => removeQuietly(containers, [net]));
  const base = await scrape();
  const baseInUse = metric(base, 'calico_libnetwork_ipam_allocations_in_use');
  const joins = (m: string): number => metric(m, 'calico_libnetwork_requests_total', { method: 'NetworkDriver.Join', result: 'ok' });
  const creates = (m: string): number => metric(m, 'calico_libnetwork_requests_total', { method: 'NetworkDriver.CreateEndpoint', result: 'ok' });

  containers.push(await runContainer(docker, { image, network: name, labels: { 'org.projectcalico.label.role': 'web' } }));
  const up = await until('endpoint active and ready', async () => {
    const m = await scrape();
    return metric(m, 'calico_libnetwork_active_local_endpoints') === 1 && metric(m, 'calico_libnetwork_endpoints_not_ready') === 0 ? m : undefined;
  });
  t.is(joins(up), joins(base) + 1);
  t.is(creates(up), creates(base) + 1);
  t.is(metric(up, 'calico_libnetwork_ipam_allocations_in_use'), baseInUse + 1);
  t.true(metric(up, 'calico_libnetwork_ipam_blocks') >= 1);
  t.true(metric(up, 'calico_libnetwork_request_seconds_count', { method: 'NetworkDriver.Join' }) >= 1);
  t.true(metric(up, 'calico_libnetwork_requests_total', { method: 'IpamDriver.RequestAddress', result: 'ok' }) >= 1);

  await removeQuietly(containers.splice(0));
  const down = await until('endpoint gone', async () => {
    const m = await scrape();
    return metric(m, 'calico_libnetwork_active_local_endpoints') === 0 && metric(m, 'calico_libnetwork_ipam_allocations_in_use') === baseInUse ? m : undefined;
  });
  t.true(metric(down, 'calico_libnetwork_requests_total', { method: 'NetworkDriver.DeleteEndpoint', result: 'ok' }) >= 1);
  t.true(metric(down, 'calico_libnetwork_requests_total', { method: 'IpamDriver.ReleaseAddress', result: 'ok' }) >= 1);
  t.is((await get(port, '/readiness')).status, 200);
  t.is((await get(port, '/nothing')).status, 404);
});

test.serial('a plugin whose DOCKER_HOST does not answer says so in its log and in readiness', async (t) => {
  const missing = `/tmp/calico-test-nodocker-${randomBytes(3).toString('hex')}.sock`;
  const { plugin, port } = await startWithHealth(missing);
  t.regex(plugin.output(), new RegExp(`Docker does not answer at DOCKER_HOST=unix://${missing}.*stays isolated`));
  t.is((await get(port, '/liveness')).status, 200);
  const r = await get(port, '/readiness');
  t.is(r.status, 503);
  const body = JSON.parse(r.body) as { failing: string[]; checks: Record<string, { ok: boolean; reason?: string }> };
  t.deepEqual(body.failing, ['docker']);
  t.true(body.checks['datastore']?.ok);
  t.regex(body.checks['docker']?.reason ?? '', new RegExp(`DOCKER_HOST=unix://${missing}`));
});
