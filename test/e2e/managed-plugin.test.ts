// The managed (v2) plugin end to end: scripts/build-plugin.sh assembles the rootfs offline and
// installs it into an isolated dockerd (docker plugin create, set, enable); the one socket answers
// both interfaces; containers on a network of the plugin ping each other, and a container on two of
// its networks reaches both (routing inside the container is written by the plugin in the container's
// namespace, so it must see the engine's namespaces). Disabling and removing the plugin at the end,
// also on failure; the dockerd goes with the harness.
//
// The plugin runs in the host's network namespace (dockerd's), like any managed network plugin:
// it gets a chain prefix, interface prefix, route protocol and pool of its own, and everything
// of them is removed at teardown.
import test from 'ava';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import Docker from 'dockerode';
import { PolicyDataplane } from '../../dataplane/policy-dataplane';
import { run } from '../../dataplane/exec';
import { removeEndpointVeth } from '../../dataplane/veth';
import { addressOn, createNetwork, exec, removeQuietly, runContainer } from '../harness/containers';
import { startDockerd, type Dockerd } from '../harness/dockerd';
import { importTestImage } from '../harness/image';
import { linksWithPrefix } from '../harness/plugin';
import { post } from '../harness/plugin-client';
import { reserveTestSubnet } from '../harness/test-subnets';

const BUILD_PLUGIN = resolve(__dirname, '../../../scripts/build-plugin.sh');

interface Cmd {
  code: number;
  stdout: string;
  stderr: string;
}

function sh(file: string, args: string[], env: Record<string, string>, timeoutMs = 180_000): Promise<Cmd> {
  return new Promise((done) => {
    execFile(file, args, { env: { ...process.env, ...env }, timeout: timeoutMs, maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : -1;
      done({ code, stdout, stderr });
    });
  });
}

interface Context {
  dockerd: Dockerd;
  docker: Docker;
  plugin: string;
  image: string;
  env: Record<string, string>;
}

let ctx: Context | undefined;
const teardowns: (() => Promise<unknown>)[] = [];

const id = randomBytes(3).toString('hex');
const plugin = `calico-mp${id}:latest`;
const ifPrefix = `p${id.slice(0, 3)}`;
const chainPrefix = `p${id}`;
const routeProtocol = 100 + (parseInt(id, 16) % 150);
// RFC 2544 benchmark range, reserved per run; never routed outside this machine.
let pool = '';

test.before(async () => {
  pool = await reserveTestSubnet();
  const dockerd = await startDockerd();
  teardowns.push(() => dockerd.stop());
  const env = { DOCKER_HOST: `unix://${dockerd.socketPath}` };
  const state = await mkdtemp(join(tmpdir(), 'calico-mp-state-'));
  teardowns.push(() => rm(state, { recursive: true, force: true }));
  const certs = await mkdtemp(join(tmpdir(), 'calico-mp-certs-'));
  teardowns.push(() => rm(certs, { recursive: true, force: true }));
  // Last in, first out: the plugin goes before the dockerd, and its kernel state after it.
  teardowns.push(async () => {
    await new PolicyDataplane({ prefix: chainPrefix, markBit: 0x100000, ifPrefix }).removeAll().catch(() => undefined);
    for (const family of ['-4', '-6']) await run('ip', [family, 'route', 'flush', 'proto', String(routeProtocol)], 'flush test routes').catch(() => undefined);
    for (const link of await linksWithPrefix(ifPrefix)) await removeEndpointVeth(link).catch(() => undefined);
  });
  teardowns.push(async () => {
    await sh('docker', ['plugin', 'disable', '-f', plugin], env, 30_000);
    await sh('docker', ['plugin', 'rm', '-f', plugin], env, 30_000);
  });
  const image = await importTestImage(dockerd.socketPath, `calico-mp-${id}:latest`);
  const sets = {
    'docker-socket.source': dockerd.socketPath,
    'state.source': state,
    'etcd-certs.source': certs,
    NODENAME: `mp-${id}`,
    IP: 'none',
    CALICO_IPV4POOL_CIDR: pool,
    CALICO_IPV6POOL_CIDR: 'none',
    CALICO_IPV4POOL_NAT_OUTGOING: 'false',
    CALICO_IPTABLES_CHAIN_PREFIX: chainPrefix,
    CALICO_INTERFACE_PREFIX: ifPrefix,
    CALICO_ROUTE_PROTOCOL: String(routeProtocol),
    CALICO_DATASTORE_PREFIX: `/calico-mp/${id}`,
  };
  const built = await sh(BUILD_PLUGIN, [
    '--name', plugin,
    '--docker-exec-root', dockerd.execRoot,
    ...Object.entries(sets).flatMap(([k, v]) => ['--set', `${k}=${v}`]),
  ], env);
  if (built.code !== 0) throw new Error(`build-plugin.sh failed (${built.code}):\n${built.stdout}\n${built.stderr}`);
  ctx = { dockerd, docker: new Docker({ socketPath: dockerd.socketPath }), plugin, image, env };
});

test.after.always(async () => {
  for (const td of teardowns.reverse()) await td().catch(() => undefined);
});

const c = (): Context => {
  if (ctx === undefined) throw new Error('setup failed');
  return ctx;
};

test.serial('the plugin is enabled, declares both interfaces and answers both on its one socket', async (t) => {
  const info = await sh('docker', ['plugin', 'inspect', '-f', '{{json .}}', plugin], c().env);
  t.is(info.code, 0, info.stderr);
  const p = JSON.parse(info.stdout) as { Id: string; Enabled: boolean; Config: { Interface: { Types: string[]; Socket: string } } };
  t.true(p.Enabled);
  t.deepEqual(p.Config.Interface.Types, ['docker.networkdriver/1.0', 'docker.ipamdriver/1.0']);
  // Docker 20.10 keeps managed plugins' sockets under /run/docker/plugins/<id>/ whatever the
  // engine's exec root.
  const socket = join('/run/docker/plugins', p.Id, p.Config.Interface.Socket);
  t.deepEqual((await post(socket, '/Plugin.Activate')).body, { Implements: ['NetworkDriver', 'IpamDriver'] });
  t.deepEqual((await post(socket, '/NetworkDriver.GetCapabilities')).body, { Scope: 'local', ConnectivityScope: 'local' });
  const refused = await post(socket, '/IpamDriver.RequestPool', JSON.stringify({ AddressSpace: 'Nope', Pool: '', Options: {}, V6: false }));
  t.regex(String(refused.body['Error']), /unknown address space/);
  // The rootfs carries the native addon, and the plugin uses it (dockerd logs the plugin's output).
  t.regex(await readFile(c().dockerd.logPath, 'utf8'), /native addon loaded/);
});

test.serial('containers on its networks: ping on one network, and a container on two reaches both', async (t) => {
  const { docker, image } = c();
  const n1 = await createNetwork(docker, { name: `mp1-${id}`, driver: plugin, ipamDriver: plugin });
  const n2 = await createNetwork(docker, { name: `mp2-${id}`, driver: plugin, ipamDriver: plugin });
  const containers: Docker.Container[] = [];
  t.teardown(() => removeQuietly(containers, [n1, n2]));
  const a = await runContainer(docker, { image, network: `mp1-${id}` });
  containers.push(a);
  const b = await runContainer(docker, { image, network: `mp1-${id}` });
  containers.push(b);
  const d = await runContainer(docker, { image, network: `mp2-${id}` });
  containers.push(d);
  const aIp = (await addressOn(a, `mp1-${id}`)).ipv4;
  const dIp = (await addressOn(d, `mp2-${id}`)).ipv4;
  t.true(aIp.startsWith(pool.split('.').slice(0, 3).join('.')), `${aIp} is from ${pool}`);
  const ping = async (from: Docker.Container, to: string): Promise<number> => {
    // A new endpoint is isolated until its policy is programmed: allow a few tries.
    for (let i = 0; i < 20; i++) {
      if ((await exec(from, ['ping', '-c1', '-W1', to])).code === 0) return 0;
    }
    return 1;
  };
  t.is(await ping(b, aIp), 0, 'b pings a on the same network');

  // Created on one network, connected to the second before start, as compose does.
  const m = await docker.createContainer({ Image: image, Cmd: ['sleep', '3600'], HostConfig: { NetworkMode: `mp1-${id}` } });
  containers.push(m);
  await n2.connect({ Container: m.id });
  await m.start();
  const mOnN2 = (await addressOn(m, `mp2-${id}`)).ipv4;
  t.is(await ping(m, aIp), 0, 'm reaches n1');
  t.is(await ping(m, dIp), 0, 'm reaches n2');
  t.is(await ping(d, mOnN2), 0, "n2's member reaches m's n2 address");
  const rules = await exec(m, ['ip', 'rule']);
  t.regex(rules.output, /from \S+ lookup \d+/, 'source routing inside the container, written in its namespace by the plugin');
});

test.serial('disable and remove leave no plugin behind', async (t) => {
  const { env } = c();
  t.is((await sh('docker', ['plugin', 'disable', plugin], env)).code, 0);
  t.is((await sh('docker', ['plugin', 'rm', plugin], env)).code, 0);
  const ls = await sh('docker', ['plugin', 'ls', '--format', '{{.Name}}'], env);
  t.false(ls.stdout.includes(`calico-mp${id}`));
  t.deepEqual(await linksWithPrefix(ifPrefix), [], 'no veth of the plugin left');
});
