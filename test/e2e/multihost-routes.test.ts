// Routes between hosts, as the plugins program them from the datastore (no route added by hand):
// three hosts of the multi-host harness, host1 and host2 on subnet A, host3 on subnet B behind a
// router, one etcd. Also host identity (calicoctl node list), a host that dies, and its removal.
import test from 'ava';
import type Docker from 'dockerode';
import { addressOn, exec, runContainer } from '../harness/containers.js';
import { startCluster, type Cluster, type Host } from '../harness/multihost.js';
import { calicoctl } from '../harness/plugin.js';
import { ourRoutes, pingUntil, until } from '../harness/multihost-probes.js';


interface NodeRow {
  name: string;
  ipv4Address: string;
  blocks: string[];
  endpoints: number;
  alive: boolean;
}

test('routes between hosts follow blocks; a dead host keeps its routes until it is removed', async (t) => {
  t.timeout(170_000);
  let cluster: Cluster | undefined;
  t.teardown(async () => {
    await cluster?.stop();
  });
  cluster = await startCluster({ hosts: 3 });
  const c = cluster;
  const [h1, h2, h3] = c.hosts as [Host, Host, Host];
  const nodes = async (): Promise<NodeRow[]> => {
    const r = await calicoctl({ env: c.ctlEnv }, ['node', 'list', '-o', 'json']);
    if (r.code !== 0) throw new Error(r.stderr);
    return JSON.parse(r.stdout) as NodeRow[];
  };

  await Promise.all(c.hosts.map((h) => h.run(['docker', 'network', 'create', '-d', 'calico', '--ipam-driver', 'calico-ipam', 'net1'])));
  const containers = await Promise.all(c.hosts.map((h) => runContainer(h.docker, { image: c.image, network: 'net1' })));
  const [a1, a2, a3] = (await Promise.all(containers.map((x) => addressOn(x, 'net1')))).map((a) => a.ipv4) as [string, string, string];
  const [c1, c2] = containers as [Docker.Container, Docker.Container, Docker.Container];

  // Every host registered with its fabric address, holds a block, and is alive.
  const listed = await nodes();
  for (const h of c.hosts) {
    t.like(listed.find((n) => n.name === h.name), { ipv4Address: `${h.address}/24`, endpoints: 1, alive: true }, h.name);
  }
  const blockOf = (name: string): string => listed.find((n) => n.name === name)?.blocks[0] ?? '';

  // host1: a blackhole for its own block, host2's block via host2; host3 is on another subnet.
  const r1 = await until('host1 routes', async () => {
    const rs = await ourRoutes(h1);
    return rs.some((r) => r.dst === blockOf('host2')) ? rs : undefined;
  }, 10_000);
  t.like(r1.find((r) => r.dst === blockOf('host1')), { type: 'blackhole' }, 'blackhole for its own block');
  t.like(r1.find((r) => r.dst === blockOf('host2')), { gateway: h2.address, dev: 'eth0' }, 'plain route: no VXLAN device in the path');
  t.false(r1.some((r) => r.dst === blockOf('host3')), 'host3 is across the router: no plain route');
  t.is((await h1.run(['ip', '-j', 'link', 'show', 'type', 'vxlan'])).stdout.trim(), '[]');

  // Containers on host1 and host2 reach each other over those routes.
  const p12 = await pingUntil(c1, a2);
  t.is(p12.code, 0, p12.output);
  t.regex(p12.output, /ttl=62/);
  t.is((await pingUntil(c2, a1)).code, 0);
  t.not((await exec(c1, ['ping', '-c', '1', '-W', '1', a3])).code, 0, 'no route to host3 without VXLAN');

  // host2 dies (dockerd and plugin gone): host1 keeps its route (its containers may still run),
  // and node list shows it dead once its lease runs out.
  await h2.kill();
  const dead = await until('host2 not alive', async () => {
    const n = (await nodes()).find((x) => x.name === 'host2');
    return n?.alive === false ? n : undefined;
  }, 45_000);
  t.is(dead.endpoints, 1);
  t.true((await ourRoutes(h1)).some((r) => r.dst === blockOf('host2')), 'routes follow blocks, not liveness');

  // Removing it releases its blocks and records, and every host withdraws the routes.
  const removed = await calicoctl({ env: c.ctlEnv }, ['node', 'remove', 'host2', '--force']);
  t.is(removed.code, 0, removed.stderr);
  t.regex(removed.stdout, /removed node host2: 1 block released, 1 address freed, 1 endpoint record removed/);
  await until('host2 routes withdrawn', async () => ((await ourRoutes(h1)).some((r) => r.dst === blockOf('host2')) ? undefined : true), 10_000);
  t.false((await nodes()).some((n) => n.name === 'host2'));
  void h3;
});
