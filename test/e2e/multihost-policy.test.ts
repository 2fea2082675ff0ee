// Policy and borrowing across hosts, on the multi-host harness (hosts on one subnet, one etcd):
// a selector rule on one host admits a labelled container of another host, and forgets its
// address when it goes; an address borrowed from another host's block is reachable from a third.
import test, { type ExecutionContext } from 'ava';
import type Docker from 'dockerode';
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { addressOn, exec, runContainer } from '../harness/containers.js';
import { startCluster, type Cluster, type Host } from '../harness/multihost.js';
import { calicoctl } from '../harness/plugin.js';

/** Serves its hostname on 8080 and 9090, so a client can prove it reached this container. */
const SERVER = ['sh', '-c', 'nc -ll -p 8080 -e hostname & nc -ll -p 9090 -e hostname & exec sleep 3600'];

async function cluster(t: ExecutionContext, options: Parameters<typeof startCluster>[0]): Promise<Cluster> {
  let c: Cluster | undefined;
  t.teardown(async () => {
    await c?.stop();
  });
  c = await startCluster(options);
  return c;
}

/** Whether `probe` holds within the time (policy and routes follow the datastore in well under). */
async function eventually(probe: () => Promise<boolean>, timeoutMs = 10_000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (!(await probe())) {
    if (Date.now() > deadline) return false;
    await sleep(200);
  }
  return true;
}

async function connects(from: Docker.Container, address: string, port: number): Promise<boolean> {
  return (await exec(from, ['nc', '-w', '1', address, String(port)])).code === 0;
}

async function ipsetsHold(h: Host, address: string): Promise<boolean> {
  return (await h.run(['ipset', 'list'])).stdout.split('\n').some((l) => l.trim() === address);
}

test('a selector rule on host2 admits a Mesos task of host1 by its label on one port only, and forgets it when it goes', async (t) => {
  t.timeout(150_000);
  const c = await cluster(t, { hosts: 2, subnets: ['a', 'a'] });
  const [h1, h2] = c.hosts as [Host, Host];
  for (const h of c.hosts) {
    for (const net of ['front', 'back']) await h.run(['docker', 'network', 'create', '-d', 'calico', '--ipam-driver', 'calico-ipam', net]);
  }
  // The frontend is started the way a Mesos agent's Docker containerizer does (Marathon passes
  // the label through container.docker.parameters), with the docker CLI on host1.
  const mesosName = `mesos-${randomBytes(8).toString('hex')}`;
  await h1.run([
    'docker', 'run', '-d', '--name', mesosName, '--net', 'front',
    '-e', 'MESOS_TASK_ID=web.1234', '-e', 'MESOS_SANDBOX=/mnt/mesos/sandbox', '-e', 'MESOS_CONTAINER_NAME=' + mesosName,
    '--label', 'org.projectcalico.label.role=frontend', '--label', 'MESOS_TASK_ID=web.1234',
    c.image, 'sleep', '3600',
  ]);
  const fe = h1.docker.getContainer(mesosName);
  const plain = await runContainer(h1.docker, { image: c.image, network: 'front' });
  const srv = await runContainer(h2.docker, { image: c.image, network: 'back', cmd: SERVER });
  const [feAddr, srvAddr] = (await Promise.all([addressOn(fe, 'front'), addressOn(srv, 'back')])).map((a) => a.ipv4) as [string, string];

  type Listed = { node: string; ipv4: string[]; profiles: string[]; labels: Record<string, string>; ready: boolean };
  let mine: Listed | undefined;
  await eventually(async () => {
    const r = await calicoctl({ env: c.ctlEnv }, ['endpoint', 'list', '-o', 'json']);
    mine = (JSON.parse(r.stdout) as Listed[]).find((e) => e.ipv4.some((a) => a.startsWith(`${feAddr}/`)));
    return mine?.ready === true;
  });
  t.like(mine, { node: 'host1', profiles: ['front'], labels: { role: 'frontend' }, ready: true }, 'the Mesos task: address, labels, profile');
  t.false(await connects(fe, srvAddr, 8080), 'two networks: isolated across hosts as on one');
  const file = join(c.dir, `${randomBytes(3).toString('hex')}.yaml`);
  await writeFile(file, `apiVersion: projectcalico.org/v3
kind: Profile
metadata:
  name: back
spec:
  ingress:
  - action: Allow
    protocol: TCP
    source:
      selector: role == 'frontend'
    destination:
      ports: [8080]
  - action: Allow
    source:
      selector: has(back)
  egress:
  - action: Allow
  labelsToApply:
    back: ""
`);
  const applied = await calicoctl({ env: c.ctlEnv }, ['apply', '-f', file]);
  t.is(applied.code, 0, applied.stderr);
  t.true(await eventually(() => connects(fe, srvAddr, 8080)), 'labelled container of host1, port 8080');
  t.false(await connects(fe, srvAddr, 9090), 'another port');
  t.false(await connects(plain, srvAddr, 8080), 'an unlabelled container');
  t.true(await ipsetsHold(h2, feAddr), "host2's selector set holds host1's container");

  await fe.remove({ force: true });
  t.true(await eventually(async () => !(await ipsetsHold(h2, feAddr))), "host2's set lost the address");
});

test('an address borrowed from another host is reachable from a third', async (t) => {
  t.timeout(150_000);
  // Two blocks of /26 for three hosts: the third host to start a container must borrow.
  const c = await cluster(t, { hosts: 3, subnets: ['a', 'a', 'a'], ipv4Pool: '198.19.0.0/25' });
  const [h1, h2, h3] = c.hosts as [Host, Host, Host];
  await Promise.all(c.hosts.map((h) => h.run(['docker', 'network', 'create', '-d', 'calico', '--ipam-driver', 'calico-ipam', 'net1'])));
  const c1 = await runContainer(h1.docker, { image: c.image, network: 'net1' });
  const c3 = await runContainer(h3.docker, { image: c.image, network: 'net1' });
  const c2 = await runContainer(h2.docker, { image: c.image, network: 'net1', cmd: SERVER });
  const [a1, a2, a3] = (await Promise.all([c1, c2, c3].map((x) => addressOn(x, 'net1')))).map((a) => a.ipv4) as [string, string, string];
  const blockOf = (a: string): string => (Number(a.split('.')[3]) < 64 ? '198.19.0.0/26' : '198.19.0.64/26');
  t.not(blockOf(a1), blockOf(a3), 'host1 and host3 each claimed a block');
  const lender = blockOf(a2) === blockOf(a1) ? h1 : h3;
  t.log(`host2 borrowed ${a2} from ${lender.name}'s block`);
  // Everyone routes the borrowed /32 to host2, over the lender's block route (or its blackhole).
  for (const h of [h1, h3]) {
    t.true(await eventually(async () => (await h.run(['ip', 'route', 'show', `${a2}/32`, 'proto', '80'])).stdout.includes(`via ${h2.address}`)), `${h.name}: ${a2} via host2`);
  }
  t.true(await eventually(() => connects(c3, a2, 8080)), "host3's container reaches the borrowed address");
  t.true(await eventually(() => connects(c1, a2, 8080)), "host1's container reaches it too");
});
