// Smoke test for the multi-host harness (test/harness/multihost/): three hosts on one machine,
// each with its own namespaces, dockerd and plugin, one etcd, a two-subnet fabric with a router.
// Proves what later multi-host tests build on: each host's plugin answers on its own socket, one
// pool hands out distinct addresses across hosts, the fabric and the plugin's dataplane carry
// container traffic between hosts (given routes, added by hand here), the router joins the two
// subnets, and stop() leaves nothing behind. Also: a failed start cleans up after itself, and what
// a SIGKILLed test process leaves behind is reaped by the next start. The three tests run
// concurrently: clusters do not collide.
import test from 'ava';
import type Docker from 'dockerode';
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { addressOn, exec, runContainer } from '../harness/containers.js';
import { runAndKill } from '../harness/crash-worker.js';
import { BUSYBOX } from '../harness/image.js';
import {
  CLUSTER_BASE_DIR,
  ClusterStartError,
  DEFAULT_IPV4_POOL,
  leftoversOf,
  reapOrphans,
  startCluster,
  type Cluster,
  type Host,
} from '../harness/multihost.js';
import { post } from '../harness/plugin-client.js';

const PING_DEADLINE_MS = 10_000;

/** The container's policy is in the kernel about 60 ms after its start returns; until then its
 * packets are dropped (fail closed). Retry, bounded. */
async function pingFrom(container: Docker.Container, target: string): Promise<{ code: number; output: string }> {
  const deadline = Date.now() + PING_DEADLINE_MS;
  for (;;) {
    const r = await exec(container, ['ping', '-c', '1', '-W', '1', target]);
    if (r.code === 0 || Date.now() > deadline) return r;
    await sleep(100);
  }
}

function inPool(address: string): boolean {
  const [net] = DEFAULT_IPV4_POOL.split('/');
  return address.split('.').slice(0, 2).join('.') === net?.split('.').slice(0, 2).join('.');
}

test('multi-host harness: 3 hosts, own sockets, one pool, traffic across hosts and the router, nothing left', async (t) => {
  t.timeout(150_000);
  const t0 = Date.now();
  let cluster: Cluster | undefined;
  t.teardown(async () => {
    await cluster?.stop();
  });
  cluster = await startCluster({ hosts: 3 });
  t.log(`bring-up ${Date.now() - t0} ms`, JSON.stringify(cluster.timings));
  const hosts = cluster.hosts;
  const [h1, h2, h3] = hosts as [Host, Host, Host];
  t.is(hosts.length, 3);
  t.deepEqual(hosts.map((h) => h.subnet), ['a', 'a', 'b']);

  // Each host: own network namespace, own host name (UTS), own dockerd, own plugin socket.
  const inode = (path: string): number => statSync(path).ino;
  t.is(new Set(hosts.map((h) => inode(`/run/netns/${h.netns}`))).size, 3, 'three network namespaces');
  const pluginOf = (h: Host): NonNullable<Host['plugin']> => {
    if (h.plugin === undefined) throw new Error(`${h.name} has no plugin process`);
    return h.plugin;
  };
  t.is(new Set(hosts.map((h) => inode(pluginOf(h).networkSocket))).size, 3, 'three plugin sockets');
  await Promise.all(hosts.map(async (h) => {
    const plugin = pluginOf(h);
    t.is((await h.run(['hostname'])).stdout.trim(), h.name);
    const info = await h.docker.info() as { Name: string; DockerRootDir: string };
    t.is(info.Name, h.name, `${h.name}: its own dockerd`);
    t.true(info.DockerRootDir.startsWith(`${h.dir}/`));
    // Inside the host, the default plugin directory holds this host's sockets.
    t.deepEqual((await h.run(['ls', '/run/docker/plugins'])).stdout.split('\n').filter(Boolean), ['calico-ipam.sock', 'calico.sock']);
    t.is(inode(`/proc/${plugin.pid}/ns/net`), inode(`/run/netns/${h.netns}`), `${h.name}: plugin in the host's network namespace`);
    const caps = await post(plugin.networkSocket, '/NetworkDriver.GetCapabilities');
    t.deepEqual(caps.body, { Scope: 'local', ConnectivityScope: 'local' });
    const ipamCaps = await post(plugin.ipamSocket, '/IpamDriver.GetCapabilities');
    t.is(ipamCaps.status, 200);
    // Forwarding started off (a fresh host) and the plugin turned it on.
    t.is((await h.run(['cat', '/proc/sys/net/ipv4/ip_forward'])).stdout.trim(), '1');
  }));

  // The same network name on every host (networks are per engine), as a user would type it.
  await Promise.all(hosts.map((h) => h.run(['docker', 'network', 'create', '-d', 'calico', '--ipam-driver', 'calico-ipam', 'net1'])));
  const containers = await Promise.all(hosts.map((h) => runContainer(h.docker, { image: cluster?.image ?? '', network: 'net1' })));
  const addrs = (await Promise.all(containers.map((c) => addressOn(c, 'net1')))).map((a) => a.ipv4);
  t.log('container addresses', addrs.join(' '));
  t.true(addrs.every(inPool), `all from ${DEFAULT_IPV4_POOL}: ${addrs.join(' ')}`);
  t.is(new Set(addrs).size, 3, 'distinct: one datastore');
  const [c1, c2] = containers as [Docker.Container, Docker.Container, Docker.Container];
  const [a1, a2] = addrs as [string, string, string];

  // host1 and host2 share subnet A: with a route to each other's container, the fabric and each
  // host's dataplane (proxy ARP, host routes, policy: members of net1 may reach each other on
  // any host) carry the ping.
  await h1.run(['ip', 'route', 'add', `${a2}/32`, 'via', h2.address]);
  await h2.run(['ip', 'route', 'add', `${a1}/32`, 'via', h1.address]);
  const p12 = await pingFrom(c1, a2);
  t.is(p12.code, 0, `host1's container pings host2's: ${p12.output}`);
  t.regex(p12.output, /ttl=62/, 'two routed hops (host1, host2)');
  const p21 = await pingFrom(c2, a1);
  t.is(p21.code, 0, `host2's container pings host1's: ${p21.output}`);

  // host3 is on subnet B, behind the router.
  const p13 = await h1.exec([BUSYBOX, 'ping', '-c', '1', '-W', '2', h3.address]);
  t.is(p13.code, 0, `host1 reaches host3 through the router: ${p13.stdout}${p13.stderr}`);
  t.regex(p13.stdout, /ttl=63/, 'one routed hop (the router)');
  // The router knows no container addresses: host1 cannot reach host3's container unaided.
  const a3 = addrs[2] ?? '';
  const p1c3 = await h1.exec([BUSYBOX, 'ping', '-c', '1', '-W', '1', a3]);
  t.not(p1c3.code, 0, 'no route beyond the two subnets');

  const t1 = Date.now();
  const stopping = cluster;
  cluster = undefined;
  await stopping.stop();
  t.log(`teardown ${Date.now() - t1} ms`);
  t.deepEqual(stopping.remnants(), [], 'nothing left: processes, namespaces, mounts, cgroups, files');
  await stopping.stop(); // idempotent
});

test('multi-host harness: a failed start removes everything it had created', async (t) => {
  t.timeout(120_000);
  // dockerd refuses the flag on every host, while etcd and the plugins come up around it.
  const err = await t.throwsAsync(startCluster({ hosts: 2, dockerdArgs: ['--no-such-flag'] }), { instanceOf: ClusterStartError });
  t.regex(err?.message ?? '', /dockerd on host\d: exited/);
  t.deepEqual(err?.remnants(), [], 'nothing left after a failed start');
});

test('multi-host harness: what a killed test process left behind is reaped', async (t) => {
  t.timeout(120_000);
  // A process that starts a one-host cluster with a running container, then is SIGKILLed: no
  // stop(), no exit hook. Its daemons die with it (pdeathsig); the container and its shim do not.
  let kill = (): void => undefined;
  let id: string | undefined;
  t.teardown(async () => {
    kill();
    if (id !== undefined) await reapOrphans(CLUSTER_BASE_DIR);
  });
  const { match } = await runAndKill(join(__dirname, '..', 'harness', 'multihost', 'crash-worker.js'), /^(mh-[0-9a-f]{6})\n/, 90_000, (k) => (kill = k));
  const cluster = match[1] ?? '';
  id = cluster;
  // (Another test's startCluster() may reap it first: only the end state is asserted.)
  t.log(`left by the killed run: ${leftoversOf(CLUSTER_BASE_DIR, cluster).length} items`);
  await reapOrphans(CLUSTER_BASE_DIR);
  t.deepEqual(leftoversOf(CLUSTER_BASE_DIR, cluster), [], 'nothing of it left after the reaper');
});
