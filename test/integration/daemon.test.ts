// The daemon binary's life cycle: configuration errors at start, one instance per socket name,
// and a clean SIGTERM, also one that comes while it is still starting.
import test from 'ava';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { PolicyDataplane } from '../../dataplane/policy-dataplane';
import { startPlugin } from '../harness/plugin';
import { post } from '../harness/plugin-client';

const DAEMON = resolve(__dirname, '../../bin/calico-libnetwork.js');

function runDaemon(env: Record<string, string>): Promise<{ code: number | null; stderr: string }> {
  return new Promise((res) => {
    const child = spawn(process.execPath, [DAEMON], { env: { PATH: process.env['PATH'] ?? '', ...env }, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
    child.once('exit', (code) => {
      clearTimeout(timer);
      res({ code, stderr });
    });
  });
}

const badConfigs: [Record<string, string>, RegExp][] = [
  [{ CALICO_LIBNETWORK_VETH_MTU: 'jumbo' }, /CALICO_LIBNETWORK_VETH_MTU must be an integer/],
  [{ ETCD_ENDPOINTS: 'etcd-1:2379' }, /ETCD_ENDPOINTS entries must use http:\/\/ or https:\/\//],
  [{ CALICO_IPV4POOL_CIDR: '10.0.0.1/8' }, /CALICO_IPV4POOL_CIDR: .*host bits/],
  [{ CALICO_IPV4POOL_CIDR: 'fd00::/64' }, /CALICO_IPV4POOL_CIDR must be an IPv4 CIDR/],
];

for (const [env, message] of badConfigs) {
  test(`invalid configuration stops the daemon at start: ${Object.entries(env).map(([k, v]) => `${k}=${v}`).join(',')}`, async (t) => {
    const name = `calico-bad${process.pid}`;
    const dataDir = join(tmpdir(), `${name}-${randomBytes(3).toString('hex')}`);
    t.teardown(() => rm(dataDir, { recursive: true, force: true }));
    const r = await runDaemon({ ...env, CALICO_NETWORK_DRIVER_NAME: name, CALICO_IPAM_DRIVER_NAME: `${name}-ipam`, CALICO_DATA_DIR: dataDir, CALICO_IPTABLES_CHAIN_PREFIX: 'tbad' });
    t.is(r.code, 1);
    t.regex(r.stderr, message);
    t.false(existsSync(`/run/docker/plugins/${name}.sock`), 'no socket was created');
    t.false(existsSync(dataDir), 'nothing was written');
  });
}

test('SIGTERM finishes in-flight requests, removes the sockets and exits 0; one instance per name', async (t) => {
  const plugin = await startPlugin({ dockerSocket: '/nonexistent/docker.sock', ipv4Pool: '198.18.66.0/24' });
  t.teardown(() => plugin.cleanup());
  const sockets = [plugin.networkDriver, plugin.ipamDriver].map((n) => `/run/docker/plugins/${n}.sock`);
  t.true(sockets.every((s) => existsSync(s)));

  // A second daemon under the same names must not steal the sockets.
  const secondDir = `${plugin.env['CALICO_DATA_DIR']}-second`;
  t.teardown(() => rm(secondDir, { recursive: true, force: true }));
  const second = await runDaemon({ ...plugin.env, CALICO_DATA_DIR: secondDir });
  t.is(second.code, 1);
  t.regex(second.stderr, /another process is already serving \/run\/docker\/plugins\/calico-/);
  t.false(existsSync(secondDir), 'the second daemon gave up before writing anything');

  const inFlight = post(sockets[1] as string, '/IpamDriver.RequestAddress', JSON.stringify({ PoolID: 'CalicoPoolIPv4', Address: '', Options: null }));
  const stopped = plugin.stop();
  const answer = await inFlight;
  t.regex(String(answer.body['Address']), /^198\.18\.66\.\d+\/32$/, 'the request that was in flight got its answer');
  t.is(await stopped, 0);
  t.false(sockets.some((s) => existsSync(s)), 'sockets removed');
});

test('SIGTERM the moment the sockets are served (the daemon still starting) stops it cleanly: exit 0, sockets removed', async (t) => {
  t.timeout(120_000);
  // Five times: the window between "serving" and the end of start-up is short.
  for (let round = 0; round < 5; round++) {
    const id = randomBytes(3).toString('hex');
    const name = `calico-st${id}`;
    const dataDir = join(tmpdir(), `${name}-data`);
    t.teardown(() => rm(dataDir, { recursive: true, force: true }));
    const env = {
      CALICO_NETWORK_DRIVER_NAME: name, CALICO_IPAM_DRIVER_NAME: `${name}-ipam`, CALICO_DATA_DIR: dataDir,
      CALICO_IPTABLES_CHAIN_PREFIX: `s${id}`, CALICO_INTERFACE_PREFIX: `s${id.slice(0, 3)}`, NODENAME: name,
      DOCKER_HOST: 'unix:///nonexistent/docker.sock', CALICO_IPV4POOL_CIDR: 'none', CALICO_IPV6POOL_CIDR: 'none',
      CALICO_HEALTH_LISTEN: 'none', CALICO_ROUTE_PROTOCOL: String(100 + (parseInt(id, 16) % 150)),
    };
    t.teardown(() => new PolicyDataplane({ prefix: env.CALICO_IPTABLES_CHAIN_PREFIX, markBit: 0x100000 }).removeAll().then(() => undefined));
    // Left only by a daemon that died before removing them (the failure this test looks for).
    t.teardown(() => Promise.all([name, `${name}-ipam`].map((n) => rm(`/run/docker/plugins/${n}.sock`, { force: true }))).then(() => undefined));
    const child = spawn(process.execPath, [DAEMON], { env: { PATH: process.env['PATH'] ?? '', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    const exited = new Promise<number | null>((res) => child.once('exit', (code) => res(code)));
    await new Promise<void>((res) => {
      let sent = false;
      const seen = (b: Buffer): void => {
        out += b.toString();
        if (!sent && out.includes('serving ')) {
          sent = true;
          child.kill('SIGTERM');
          res();
        }
      };
      child.stdout.on('data', seen);
      child.stderr.on('data', seen);
      void exited.then(() => res());
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    const code = await exited;
    clearTimeout(timer);
    t.is(code, 0, `round ${round}:\n${out}`);
    t.false(existsSync(`/run/docker/plugins/${name}.sock`) || existsSync(`/run/docker/plugins/${name}-ipam.sock`), `round ${round}: sockets removed`);
  }
});
