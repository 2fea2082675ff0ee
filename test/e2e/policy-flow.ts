// Policy end to end: a real isolated dockerd, the real plugin binary, real iptables and ipsets on
// this host, on the embedded store and on etcd. Every connectivity check is also asked of
// `calicoctl policy explain`, which must agree with what the kernel did.
import test, { type ExecutionContext } from 'ava';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Docker from 'dockerode';
import { run } from '../../dataplane/exec';
import { addressOn, createNetwork, exec, removeQuietly, runContainer, type ContainerAddress } from '../harness/containers';
import { startEtcd } from '../harness/etcd';
import { dockerWithImage, fileFixture } from '../harness/fixture';
import { reserveTestSubnet } from '../harness/test-subnets';
import { calicoctl, startPlugin, waitProgrammed, type Plugin } from '../harness/plugin';

/** Serves its hostname on 8080 and 9090, so a client can prove it reached this container. */
const SERVER = ['sh', '-c', 'nc -ll -p 8080 -e hostname & nc -ll -p 9090 -e hostname & exec sleep 3600'];

interface Member {
  readonly container: Docker.Container;
  readonly address: ContainerAddress;
  readonly hostname: string;
}

interface Context {
  docker: Docker;
  plugin: Plugin;
  image: string;
  netA: string;
  netB: string;
  frontend: Member;
  plain: Member;
  serverA: Member;
  serverB: Member;
  tmp: string;
}

export function policySuite(backend: 'embedded' | 'etcd'): void {
  const containers: Docker.Container[] = [];
  const networks: Docker.Network[] = [];

  async function member(docker: Docker, plugin: Plugin, spec: Parameters<typeof runContainer>[1], wait = true): Promise<Member> {
    const container = await runContainer(docker, spec);
    containers.push(container);
    const address = await addressOn(container, spec.network);
    if (wait) await waitProgrammed(plugin, address.endpointId);
    return { container, address, hostname: (await container.inspect()).Config.Hostname };
  }

  const c = fileFixture(test, async (onTeardown): Promise<Context> => {
    const id = randomBytes(3).toString('hex');
    const { dockerd, docker, image } = await dockerWithImage(onTeardown, 'calico-policy');
    const etcd = backend === 'etcd' ? await startEtcd() : undefined;
    if (etcd !== undefined) onTeardown(() => etcd.stop());
    const plugin = await startPlugin({
      dockerSocket: dockerd.socketPath,
      ipv4Pool: await reserveTestSubnet(),
      ...(etcd !== undefined && { etcdEndpoints: etcd.endpoints }),
    });
    onTeardown(() => plugin.cleanup());
    const tmp = await mkdtemp(join(tmpdir(), 'calico-policy-'));
    onTeardown(() => rm(tmp, { recursive: true, force: true }));
    onTeardown(() => removeQuietly(containers, networks));
    const netA = `front-${id}`;
    const netB = `back-${id}`;
    for (const name of [netA, netB]) networks.push(await createNetwork(docker, { name, driver: plugin.networkDriver, ipamDriver: plugin.ipamDriver }));
    const [frontend, plain, serverA, serverB] = await Promise.all([
      member(docker, plugin, { image, network: netA, labels: { 'org.projectcalico.label.role': 'frontend' } }),
      member(docker, plugin, { image, network: netA }),
      member(docker, plugin, { image, network: netA, cmd: SERVER }),
      member(docker, plugin, { image, network: netB, cmd: SERVER }),
    ]);
    return { docker, plugin, image, netA, netB, frontend: frontend!, plain: plain!, serverA: serverA!, serverB: serverB!, tmp };
  });

  async function connects(from: Member, to: Member, port: number): Promise<boolean> {
    const r = await exec(from.container, ['nc', '-w', '1', to.address.ipv4, String(port)]);
    return r.output.includes(to.hostname);
  }

  async function explained(plugin: Plugin, from: Member, to: Member, port: number): Promise<{ allowed: boolean }> {
    const r = await calicoctl(plugin, ['policy', 'explain', from.address.endpointId, to.address.ipv4, '--protocol', 'tcp', '--port', String(port), '-o', 'json']);
    if (r.code !== 0) throw new Error(r.stderr);
    return JSON.parse(r.stdout) as { allowed: boolean };
  }

  /** The kernel and `policy explain` must both say `expected`. */
  async function expectTcp(t: ExecutionContext, from: Member, to: Member, port: number, expected: boolean, what: string): Promise<void> {
    t.is(await connects(from, to, port), expected, `${what}: kernel`);
    t.is((await explained(c().plugin, from, to, port)).allowed, expected, `${what}: policy explain`);
  }

  async function applyProfile(t: ExecutionContext, yaml: string): Promise<void> {
    const file = join(c().tmp, `${randomBytes(3).toString('hex')}.yaml`);
    await writeFile(file, yaml);
    const r = await calicoctl(c().plugin, ['apply', '-f', file]);
    t.is(r.code, 0, r.stderr);
  }

  /** Network B's profile: the defaults, plus `extra` ingress rules. */
  const profileB = (extra: string): string => `apiVersion: projectcalico.org/v3
kind: Profile
metadata:
  name: ${c().netB}
spec:
  ingress:
${extra}  - action: Allow
    source:
      selector: has(${c().netB})
  egress:
  - action: Allow
  labelsToApply:
    ${c().netB}: ""
`;

  test.serial(`${backend}: containers on one calico network talk`, async (t) => {
    await expectTcp(t, c().plain, c().serverA, 8080, true, 'same network');
    await expectTcp(t, c().frontend, c().serverA, 9090, true, 'same network, other port');
  });

  test.serial(`${backend}: containers on two calico networks cannot`, async (t) => {
    await expectTcp(t, c().frontend, c().serverB, 8080, false, 'A to B');
    await expectTcp(t, c().serverB, c().serverA, 8080, false, 'B to A');
    const ping = await exec(c().plain.container, ['ping', '-c', '1', '-W', '1', c().serverB.address.ipv4]);
    t.not(ping.code, 0, 'ICMP is isolated too');
  });

  test.serial(`${backend}: a rule allowing tcp 8080 from role == 'frontend' admits only that container, only on that port`, async (t) => {
    await applyProfile(t, profileB(`  - action: Allow
    protocol: TCP
    source:
      selector: role == 'frontend'
    destination:
      ports: [8080]
`));
    const deadline = Date.now() + 5_000;
    while (!(await connects(c().frontend, c().serverB, 8080)) && Date.now() < deadline);
    await expectTcp(t, c().frontend, c().serverB, 8080, true, 'labelled, 8080');
    await expectTcp(t, c().frontend, c().serverB, 9090, false, 'labelled, 9090');
    await expectTcp(t, c().plain, c().serverB, 8080, false, 'unlabelled, 8080');
  });

  test.serial(`${backend}: deleting the rule blocks it again within 2 s`, async (t) => {
    t.true(await connects(c().frontend, c().serverB, 8080), 'allowed before');
    await applyProfile(t, profileB(''));
    const applied = Date.now();
    let blockedAt: number | undefined;
    while (blockedAt === undefined && Date.now() - applied < 10_000) {
      const attempt = Date.now();
      if (!(await connects(c().frontend, c().serverB, 8080))) blockedAt = attempt;
    }
    t.not(blockedAt, undefined, 'blocked at all');
    t.true((blockedAt ?? Infinity) - applied < 2_000, `blocked ${String((blockedAt ?? NaN) - applied)} ms after the change`);
    await expectTcp(t, c().frontend, c().serverB, 8080, false, 'after deletion');
  });

  test.serial(`${backend}: a container whose labels are not known yet is never reachable`, async (t) => {
    // A second plugin that cannot reach Docker can never learn container labels: its endpoints
    // must stay isolated (fail closed), although the default profile would admit their peers.
    const blind = await startPlugin({ dockerSocket: join(c().tmp, 'no-docker.sock'), ipv4Pool: await reserveTestSubnet() });
    t.teardown(() => blind.cleanup());
    const name = `blind-${randomBytes(3).toString('hex')}`;
    const net = await createNetwork(c().docker, { name, driver: blind.networkDriver, ipamDriver: blind.ipamDriver });
    const own: Docker.Container[] = [];
    // Teardowns run last-in first-out: the containers and network go while their plugin still
    // answers Docker's Leave and DeleteEndpoint.
    t.teardown(() => removeQuietly(own, [net]));
    const target = await member(c().docker, blind, { image: c().image, network: name, cmd: SERVER, labels: { 'org.projectcalico.label.role': 'db' } }, false);
    const peer = await member(c().docker, blind, { image: c().image, network: name }, false);
    own.push(target.container, peer.container);
    for (let i = 0; i < 5; i++) t.false(await connects(peer, target, 8080), `attempt ${i + 1}`);
    const eps = JSON.parse((await calicoctl(blind, ['endpoint', 'list', '-o', 'json'])).stdout) as { id: string; ready: boolean }[];
    t.deepEqual(eps.map((e) => e.ready), [false, false]);
    const explained = await calicoctl(blind, ['policy', 'explain', peer.address.endpointId, target.address.ipv4, '--port', '8080', '-o', 'json']);
    const verdict = JSON.parse(explained.stdout) as { allowed: boolean; egress: { reason: string } };
    t.false(verdict.allowed, 'policy explain agrees: isolated');
    t.regex(verdict.egress.reason, /is not ready/);
    const { stdout } = await run('iptables', ['-S'], 'read the filter table');
    t.true(stdout.includes(`-N ${blind.chainPrefix}-from-wl-dispatch`), 'the plugin programs policy');
    t.false(stdout.includes(blind.hostIf(target.address.endpointId)), 'no rule names the interface: the final drop applies');
  });

  test.serial(`${backend}: with label copying off, Join waits for the policy and the first packet passes`, async (t) => {
    // Docker is still asked for the network's name (the profile's, the same on every host); the
    // containers' labels are not copied.
    const plain = await startPlugin({
      dockerSocket: (c().plugin.env['DOCKER_HOST'] ?? '').replace(/^unix:\/\//, ''),
      ipv4Pool: await reserveTestSubnet(),
      env: { CALICO_LIBNETWORK_LABEL_ENDPOINTS: 'false' },
    });
    t.teardown(() => plain.cleanup());
    const name = `nolabels-${randomBytes(3).toString('hex')}`;
    const net = await createNetwork(c().docker, { name, driver: plain.networkDriver, ipamDriver: plain.ipamDriver });
    const own: Docker.Container[] = [];
    // Teardowns run last-in first-out: the containers and network go while their plugin still
    // answers Docker's Leave and DeleteEndpoint.
    t.teardown(() => removeQuietly(own, [net]));
    // No waiting for the kernel here: the endpoints were programmed before Join answered.
    const a = await member(c().docker, plain, { image: c().image, network: name }, false);
    const b = await member(c().docker, plain, { image: c().image, network: name }, false);
    own.push(a.container, b.container);
    const ping = await exec(a.container, ['ping', '-c', '1', '-W', '2', b.address.ipv4]);
    t.is(ping.code, 0, ping.output);
    const eps = JSON.parse((await calicoctl(plain, ['endpoint', 'list', '-o', 'json'])).stdout) as { ready: boolean; labels: Record<string, string> }[];
    t.deepEqual(eps.map((e) => [e.ready, e.labels]), [[true, {}], [true, {}]]);
  });

  test.serial(`${backend}: labels come from one inspection of the container each event names, not from listing the network`, async (t) => {
    const watched = await startPlugin({
      dockerSocket: (c().plugin.env['DOCKER_HOST'] ?? '').replace(/^unix:\/\//, ''),
      ipv4Pool: await reserveTestSubnet(),
      env: { DEBUG: 'calico:labels' },
    });
    t.teardown(() => watched.cleanup());
    const id = randomBytes(3).toString('hex');
    const [first, second] = [`insp-a-${id}`, `insp-b-${id}`];
    const nets: Docker.Network[] = [];
    const own: Docker.Container[] = [];
    t.teardown(() => removeQuietly(own, nets));
    for (const name of [first, second]) nets.push(await createNetwork(c().docker, { name, driver: watched.networkDriver, ipamDriver: watched.ipamDriver }));
    // Started on the first network (`docker run`), then connected to the second while running.
    const m = await member(c().docker, watched, { image: c().image, network: first, labels: { 'org.projectcalico.label.role': 'api' } });
    own.push(m.container);
    await c().docker.getNetwork(second).connect({ Container: m.container.id });
    const onSecond = await addressOn(m.container, second);
    await waitProgrammed(watched, onSecond.endpointId);
    const eps = JSON.parse((await calicoctl(watched, ['endpoint', 'list', '-o', 'json'])).stdout) as { id: string; ready: boolean; labels: Record<string, string> }[];
    t.deepEqual(eps.map((e) => [e.ready, e.labels['role']]), [[true, 'api'], [true, 'api']]);
    const log = watched.output();
    t.regex(log, new RegExp(`container ${m.container.id.slice(0, 12)}: inspecting after Docker event network connect`));
    t.false(/looking up after Docker event/.test(log), 'no listing of the network on an event');
  });

  test.serial(`${backend}: a plugin restart reprograms identical rules with no gap`, async (t) => {
    const before = await ourRules(c().plugin.chainPrefix);
    // A blocked client keeps trying during the restart: not one attempt may get through.
    let stop = false;
    let leaks = 0;
    let attempts = 0;
    const prober = (async () => {
      while (!stop) {
        attempts++;
        if (await connects(c().plain, c().serverB, 8080)) leaks++;
      }
    })();
    await c().plugin.restart();
    await new Promise((r) => setTimeout(r, 1_500));
    stop = true;
    await prober;
    t.true(attempts > 1);
    t.is(leaks, 0, 'no connection got through while the plugin restarted');
    t.deepEqual(await ourRules(c().plugin.chainPrefix), before, 'same rules and sets, no duplicates');
    await expectTcp(t, c().plain, c().serverA, 8080, true, 'still allowed after restart');
  });

  test.serial(`${backend}: removed containers leave nothing in iptables or ipset`, async (t) => {
    const gone = [c().frontend, c().plain, c().serverA, c().serverB];
    await removeQuietly(gone.map((m) => m.container));
    const deadline = Date.now() + 10_000;
    let leftovers: string[] = [];
    do {
      const rules = (await ourRules(c().plugin.chainPrefix)).join('\n');
      // The address as a whole (a member /32 or a bare match), not a prefix of something else:
      // the first container may hold the block's .0, which the pool sets name as <pool>.0/24.
      const address = (ip: string): RegExp => new RegExp(`(^|[^\\d.])${ip.replaceAll('.', '\\.')}(/32)?(?![\\d./])`, 'm');
      leftovers = gone.flatMap((m) => [
        ...(rules.includes(c().plugin.hostIf(m.address.endpointId)) ? [c().plugin.hostIf(m.address.endpointId)] : []),
        ...(address(m.address.ipv4).test(rules) ? [m.address.ipv4] : []),
      ]);
      if (leftovers.length === 0) break;
      await new Promise((r) => setTimeout(r, 100));
    } while (Date.now() < deadline);
    t.deepEqual(leftovers, []);
  });
}

/** Our chains' rules (iptables-save, both families, no counters) and our sets with members,
 * sorted, so two snapshots compare equal exactly when the programmed policy is the same. */
async function ourRules(prefix: string): Promise<string[]> {
  const lines: string[] = [];
  for (const tool of ['iptables-save', 'ip6tables-save']) {
    const { stdout } = await run(tool, [], 'save');
    lines.push(...stdout.split('\n').filter((l) => l.includes(prefix) && !l.startsWith('#')).map((l) => l.replace(/\[\d+:\d+\]/, '')).map((l) => `${tool}: ${l}`));
  }
  const { stdout } = await run('ipset', ['save'], 'ipset save');
  lines.push(...stdout.split('\n').filter((l) => l.split(' ')[1]?.startsWith(prefix)));
  return lines.sort();
}
