// The single-host end-to-end flow against a real, isolated dockerd and the real plugin binary.
// Registered once per datastore backend (embedded-store.test.ts, etcd.test.ts) so the same flow
// proves both.
import test, { type ExecutionContext } from 'ava';
import { randomBytes, randomInt } from 'node:crypto';
import Docker from 'dockerode';
import { run } from '../../dataplane/exec';
import { linkExists } from '../../dataplane/veth';
import { addressOn, createNetwork, exec, removeQuietly, runContainer, type ContainerAddress } from '../harness/containers';
import type { Dockerd } from '../harness/dockerd';
import { startEtcd } from '../harness/etcd';
import { dockerWithImage, fileFixture } from '../harness/fixture';
import { reserveTestSubnet } from '../harness/test-subnets';
import { calicoctl, startPlugin, waitProgrammed, type Plugin } from '../harness/plugin';

interface Context {
  dockerd: Dockerd;
  docker: Docker;
  etcd?: Awaited<ReturnType<typeof startEtcd>>;
  plugin: Plugin;
  image: string;
  v4Pool: string;
  v6Pool: string;
  hostAddress: string;
}

export function singleHostSuite(backend: 'embedded' | 'etcd'): void {
  const c = fileFixture(test, async (onTeardown): Promise<Context> => {
    // RFC 2544 benchmark ranges: never routed outside this machine, random per run.
    const v4Pool = await reserveTestSubnet();
    const v6Pool = `fd00:ca11:${randomBytes(2).toString('hex')}::/64`;
    const hostAddress = `198.19.255.${randomInt(1, 255)}`;
    const docker = await dockerWithImage(onTeardown);
    const etcd = backend === 'etcd' ? await startEtcd() : undefined;
    if (etcd !== undefined) onTeardown(() => etcd.stop());
    // A host address of this run's own, on lo (this kernel has no dummy interfaces).
    await run('ip', ['addr', 'add', `${hostAddress}/32`, 'dev', 'lo'], 'add host address');
    onTeardown(() => run('ip', ['addr', 'del', `${hostAddress}/32`, 'dev', 'lo'], 'remove host address'));
    const plugin = await startPlugin({
      dockerSocket: docker.dockerd.socketPath,
      ipv4Pool: v4Pool,
      ipv6Pool: v6Pool,
      ...(etcd !== undefined && { etcdEndpoints: etcd.endpoints }),
      // The label resolver says why it looked a container up (an event, or a poll).
      env: { DEBUG: 'calico:labels' },
    });
    onTeardown(() => plugin.cleanup());
    return { ...docker, plugin, v4Pool, v6Pool, hostAddress, ...(etcd !== undefined && { etcd }) };
  });

  async function withNetwork(t: ExecutionContext, opts: { subnet?: string; ipv6?: boolean } = {}): Promise<{ name: string; net: Docker.Network; containers: Docker.Container[] }> {
    const name = `net-${randomBytes(3).toString('hex')}`;
    const net = await createNetwork(c().docker, { name, driver: c().plugin.networkDriver, ipamDriver: c().plugin.ipamDriver, ...opts });
    const containers: Docker.Container[] = [];
    t.teardown(() => removeQuietly(containers, [net]));
    return { name, net, containers };
  }

  async function assertNoTraces(t: ExecutionContext, endpoints: ContainerAddress[]): Promise<void> {
    for (const ep of endpoints) {
      t.false(await linkExists(c().plugin.hostIf(ep.endpointId)), `veth of ${ep.ipv4} removed`);
      for (const ip of [ep.ipv4, ep.ipv6].filter((a) => a !== '')) {
        const { stdout } = await run('ip', ['-j', ip.includes(':') ? '-6' : '-4', 'route', 'show', 'exact', ip], 'routes');
        t.deepEqual(JSON.parse(stdout || '[]'), [], `route to ${ip} removed`);
      }
    }
    const ipam = await calicoctl(c().plugin, ['ipam', 'show', '-o', 'json']);
    t.is(ipam.code, 0, ipam.stderr);
    const blocks = JSON.parse(ipam.stdout) as { used: number }[];
    t.is(blocks.reduce((n, b) => n + b.used, 0), 0, 'no address left allocated');
  }

  test.serial(`${backend}: two containers ping each other and the host`, async (t) => {
    const { name, containers } = await withNetwork(t);
    containers.push(await runContainer(c().docker, { image: c().image, network: name }));
    containers.push(await runContainer(c().docker, { image: c().image, network: name }));
    const [a, b] = await Promise.all(containers.map((x) => addressOn(x, name)));
    if (a === undefined || b === undefined) throw new Error('no addresses');
    await Promise.all([a, b].map((x) => waitProgrammed(c().plugin, x.endpointId)));
    // Labels are looked up when Docker's events say the container was connected or started (by
    // inspecting the container the event names), not by polling through the whole start (the
    // first endpoint may beat the stream's opening).
    t.true(containers.some((x) => c().plugin.output().includes(`container ${x.id.slice(0, 12)}: inspecting after Docker event`)), 'a lookup triggered by an event');
    t.true(a.ipv4.startsWith(c().v4Pool.replace('.0/24', '.')), `${a.ipv4} is from ${c().v4Pool}`);
    t.not(a.ipv4, b.ipv4);
    const routes = await exec(containers[0]!, ['ip', 'route']);
    t.regex(routes.output, /default via 169\.254\.1\.1 dev eth0/);
    t.regex(routes.output, /169\.254\.1\.1 dev eth0/);
    const ping = await exec(containers[0]!, ['ping', '-c', '1', '-W', '5', b.ipv4]);
    t.is(ping.code, 0, ping.output);
    const toHost = await exec(containers[1]!, ['ping', '-c', '1', '-W', '5', c().hostAddress]);
    t.is(toHost.code, 0, toHost.output);
    const fromHost = await run('busybox', ['ping', '-c', '1', '-W', '5', a.ipv4], 'ping from host').then(() => true, () => false);
    t.true(fromHost, 'host reaches the container through its /32 route');
    const endpoints = await calicoctl(c().plugin, ['endpoint', 'list', '-o', 'json']);
    const listed = JSON.parse(endpoints.stdout) as { id: string; profiles: string[]; ipv4: string[] }[];
    t.deepEqual(listed.map((e) => e.ipv4[0]).sort(), [`${a.ipv4}/32`, `${b.ipv4}/32`].sort());
    t.true(listed.every((e) => e.profiles.includes(name)), 'endpoints carry the network profile');
    // Each allocation names its owner: this node, a container, and (recorded right after
    // CreateEndpoint answers) the endpoint.
    const owners = async (): Promise<{ ip: string; node: string; kind: string; endpointId?: string }[]> =>
      (JSON.parse((await calicoctl(c().plugin, ['ipam', 'show', '-o', 'json'])).stdout) as { allocations: { ip: string; node: string; kind: string; endpointId?: string }[] }[]).flatMap((bl) => bl.allocations);
    let allocations = await owners();
    for (let i = 0; i < 50 && allocations.some((x) => x.endpointId === undefined); i++) allocations = await owners();
    t.deepEqual(
      allocations.map((x) => [x.ip, x.node, x.kind, x.endpointId]).sort(),
      [a, b].map((x) => [x.ipv4, c().plugin.node, 'container', x.endpointId]).sort(),
    );
    await removeQuietly(containers);
    await assertNoTraces(t, [a, b]);
  });

  test.serial(`${backend}: --ip gives exactly that address`, async (t) => {
    const { name, containers } = await withNetwork(t, { subnet: c().v4Pool });
    const wanted = c().v4Pool.replace('.0/24', '.77');
    containers.push(await runContainer(c().docker, { image: c().image, network: name, ip: wanted }));
    const addr = await addressOn(containers[0]!, name);
    t.is(addr.ipv4, wanted);
    const shown = await exec(containers[0]!, ['ip', '-4', 'addr', 'show', 'eth0']);
    t.regex(shown.output, new RegExp(`inet ${wanted.replaceAll('.', '\\.')}/32`));
    // The same address cannot be handed out twice.
    const err = await t.throwsAsync(runContainer(c().docker, { image: c().image, network: name, ip: wanted }));
    t.regex(err?.message ?? '', /already in use/);
    await removeQuietly(containers);
    await assertNoTraces(t, [addr]);
  });

  test.serial(`${backend}: --subnet that is not a pool fails with the plugin's message`, async (t) => {
    const err = await t.throwsAsync(withNetwork(t, { subnet: '203.0.113.0/24' }));
    t.regex(err?.message ?? '', /no calico IP pool matches --subnet 203\.0\.113\.0\/24/);
  });

  test.serial(`${backend}: an --ipv6 network pings over IPv6`, async (t) => {
    const { name, containers } = await withNetwork(t, { ipv6: true });
    containers.push(await runContainer(c().docker, { image: c().image, network: name }));
    containers.push(await runContainer(c().docker, { image: c().image, network: name }));
    const [a, b] = await Promise.all(containers.map((x) => addressOn(x, name)));
    if (a === undefined || b === undefined) throw new Error('no addresses');
    await Promise.all([a, b].map((x) => waitProgrammed(c().plugin, x.endpointId)));
    t.regex(a.ipv6, /^fd00:ca11:/);
    const ping = await exec(containers[0]!, ['ping', '-6', '-c', '1', '-W', '5', b.ipv6]);
    t.is(ping.code, 0, ping.output);
    const ping4 = await exec(containers[1]!, ['ping', '-c', '1', '-W', '5', a.ipv4]);
    t.is(ping4.code, 0, ping4.output);
    await removeQuietly(containers);
    await assertNoTraces(t, [a, b]);
  });

  test.serial(`${backend}: 50 containers created and removed leave zero leaks`, async (t) => {
    const { name, containers } = await withNetwork(t);
    const addresses: ContainerAddress[] = [];
    for (let batch = 0; batch < 5; batch++) {
      const started = await Promise.all(Array.from({ length: 10 }, () => runContainer(c().docker, { image: c().image, network: name })));
      containers.push(...started);
      addresses.push(...(await Promise.all(started.map((x) => addressOn(x, name)))));
    }
    t.is(new Set(addresses.map((a) => a.ipv4)).size, 50, 'fifty distinct addresses');
    await removeQuietly(containers);
    await assertNoTraces(t, addresses);
  });
}
