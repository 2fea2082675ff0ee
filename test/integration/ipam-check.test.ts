// calicoctl ipam check / ipam release against a running daemon's embedded store: leaks planted by
// the test (an old allocation with no endpoint, an endpoint record with no allocation, a duplicate,
// a block of a removed host) are found, per host; `release --from-report` repairs them, re-checking
// each entry (one became in use after the report and is left alone), and never touches an address
// in use, a pending allocation or the swarm manager's; `release --ip` of an address in use is
// refused and changes nothing. No Docker: the daemon's reconciler waits for it and so stays out of
// the way.
import test from 'ava';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Keys } from '../../datastore/keys';
import { RemoteStore, storeSocketPath } from '../../datastore/store-socket';
import { Allocator } from '../../ipam/allocator';
import { serialize } from '../../model/codec';
import type { Endpoint } from '../../model/endpoint';
import type { Finding } from '../../workload/ipam-check-plan';
import { calicoctl, startPlugin } from '../harness/plugin';
import { reserveTestSubnet } from '../harness/test-subnets';

// The grace period is an hour and the planted allocations two hours old: however slow the machine,
// what is pending stays pending and what is old stays old for the whole test.
const GRACE_S = 3600;
const OLD = new Date(Date.now() - 2 * GRACE_S * 1000).toISOString();
const HANDLE = 'docker:CalicoPoolIPv4';
const id = (c: string): string => c.repeat(64);

function endpoint(epId: string, node: string, ip: string, networkId: string): Endpoint {
  return {
    id: epId, networkId, node, hostInterface: `cali${epId.slice(0, 11)}`, ipv4: [`${ip}/32`], ipv6: [], mac: '', profiles: [],
    labels: {}, ready: true, profilesPending: false, gatewayIndex: 0, containerId: epId.replace(/./g, 'f'), createdAt: OLD,
  };
}

test('ipam check finds planted leaks per host; release --from-report repairs them and leaves in-use addresses alone', async (t) => {
  const pool = await reserveTestSubnet();
  const plugin = await startPlugin({ dockerSocket: '/nonexistent/docker.sock', ipv4Pool: pool, env: { CALICO_RECONCILE_GRACE: String(GRACE_S) } });
  const dir = await mkdtemp(join(tmpdir(), 'ipam-check-'));
  const store = new RemoteStore(storeSocketPath(plugin.env['CALICO_DATA_DIR'] ?? ''));
  t.teardown(async () => {
    await store.close();
    await rm(dir, { recursive: true, force: true });
    await plugin.cleanup();
  });
  const keys = new Keys(plugin.env['CALICO_DATASTORE_PREFIX']);
  const here = new Allocator({ store, keys, node: plugin.node });
  const owner = (over: object = {}): { handle: string; kind: 'container'; allocatedAt: string } => ({ handle: HANDLE, kind: 'container', allocatedAt: OLD, ...over });
  const assign = async (over: object = {}): Promise<string> => (await here.autoAssign({ family: 4, pools: [pool], owner: owner(over) })).ip;
  const network = 'n'.repeat(64);
  await store.create(keys.network(network), serialize({ id: network, ipv4Pools: ['0.0.0.0/0'], ipv6Pools: [], createdBy: plugin.node, createdAt: OLD }));
  const putEndpoint = (e: Endpoint): Promise<unknown> => store.create(keys.endpoint(e.node, e.id), serialize(e));

  // In use: a container's address, with its record.
  const inUse = await assign({ endpointId: id('a') });
  await putEndpoint(endpoint(id('a'), plugin.node, inUse, network));
  // Leaked: handed out 10 minutes ago, no endpoint ever recorded; a second one becomes in use
  // after the report is written.
  const leaked = await assign();
  const lateUse = await assign();
  // Pending (just handed out) and the swarm manager's: never released.
  const pending = await assign({ allocatedAt: new Date().toISOString() });
  const swarm = (await here.autoAssign({ family: 4, pools: [pool], owner: { node: '@swarm', handle: 'swarm:CalicoGlobalPoolIPv4', kind: 'container' } })).ip;
  // An endpoint record whose address no block holds.
  const unallocated = pool.replace('0/24', '250');
  await putEndpoint(endpoint(id('b'), plugin.node, unallocated, network));
  // A duplicate: a second record using the in-use address.
  await putEndpoint(endpoint(id('c'), plugin.node, inUse, network));
  // A block of a host that is gone (no registration), holding one address.
  const gone = `gone-${plugin.node}`;
  const goneIp = (await new Allocator({ store, keys, node: gone }).autoAssign({ family: 4, pools: [pool], owner: owner() })).ip;

  const show = async (): Promise<string> => (await calicoctl(plugin, ['ipam', 'show', '-o', 'json'])).stdout;
  const before = await show();

  // release --ip of an address in use: refused, nothing changes.
  const refused = await calicoctl(plugin, ['ipam', 'release', '--ip', inUse]);
  t.is(refused.code, 1);
  t.regex(refused.stderr, new RegExp(`${inUse.replace(/\./g, '\\.')} is in use by endpoint aaaaaaaaaaaa \\(container ffffffffffff\\) on ${plugin.node}.*not released`));
  for (const [ip, why] of [[pending, /within the grace period/], [swarm, /swarm manager/]] as const) {
    const r = await calicoctl(plugin, ['ipam', 'release', '--ip', ip]);
    t.is(r.code, 1, `${ip} refused`);
    t.regex(r.stderr, why);
  }
  t.is(await show(), before, 'refused releases change nothing');

  const check = await calicoctl(plugin, ['ipam', 'check', '-o', 'json']);
  t.is(check.code, 3, `findings to act on exit 3: ${check.stderr}`);
  const report = JSON.parse(check.stdout) as { kind: string; findings: Finding[] };
  t.is(report.kind, 'IpamCheckReport');
  const brief = (fs: Finding[]): string[] => fs.map((f) => `${f.host} ${f.kind} ${f.ip ?? f.block ?? ''} ${f.repair}`).sort();
  const goneBlock = report.findings.find((f) => f.kind === 'orphan-block')?.block ?? '';
  t.deepEqual(brief(report.findings), [
    `${gone} address-without-endpoint ${goneIp} release`,
    `${gone} orphan-block ${goneBlock} release-host`,
    `${plugin.node} address-without-endpoint ${lateUse} release`,
    `${plugin.node} address-without-endpoint ${leaked} release`,
    `${plugin.node} address-without-endpoint ${pending} none`,
    `${plugin.node} duplicate ${inUse} none`,
    `${plugin.node} endpoint-without-allocation ${unallocated} claim`,
    `@swarm address-without-endpoint ${swarm} none`,
  ].sort());
  const table = await calicoctl(plugin, ['ipam', 'check']);
  t.regex(table.stdout, /^HOST\s+FINDING\s+ADDRESS\s+REPAIR\s+WHY$/m);
  t.regex(table.stdout, new RegExp(`^${plugin.node}\\s+address without endpoint\\s+${leaked.replace(/\./g, '\\.')}\\s+release\\s+allocated but no endpoint was ever recorded`, 'm'));

  const file = join(dir, 'report.json');
  await writeFile(file, check.stdout);
  // After the report: a container takes one of the reported addresses.
  await putEndpoint(endpoint(id('d'), plugin.node, lateUse, network));

  const release = await calicoctl(plugin, ['ipam', 'release', '--from-report', file]);
  t.is(release.code, 0, release.stderr);
  t.log(release.stdout);
  const out = release.stdout;
  t.regex(out, new RegExp(`^released ${leaked.replace(/\./g, '\\.')} \\(held by ${HANDLE} on ${plugin.node}\\)`, 'm'));
  t.regex(out, new RegExp(`^skipped address without endpoint ${lateUse.replace(/\./g, '\\.')} .*now in use by endpoint dddddddddddd`, 'm'));
  t.regex(out, new RegExp(`^allocated ${unallocated.replace(/\./g, '\\.')} to endpoint bbbbbbbbbbbb on ${plugin.node} \\(${HANDLE}#b{64}\\)`, 'm'));
  t.regex(out, new RegExp(`^released host ${gone} from its blocks`, 'm'));
  t.regex(out, new RegExp(`^skipped duplicate ${inUse.replace(/\./g, '\\.')} .*not repairable`, 'm'));
  t.regex(out, /^4 repaired, 4 left as they are$/m);

  // What is left: only what must stay.
  const afterCheck = await calicoctl(plugin, ['ipam', 'check', '-o', 'json']);
  t.is(afterCheck.code, 3, 'the duplicate is still there for the operator');
  const after = JSON.parse(afterCheck.stdout) as { findings: Finding[] };
  t.deepEqual(brief(after.findings), [
    `${plugin.node} address-without-endpoint ${pending} none`,
    `${plugin.node} duplicate ${inUse} none`,
    `@swarm address-without-endpoint ${swarm} none`,
  ].sort());
  // The operator settles the duplicate: what is left is listed, and needs nothing (exit 0).
  await store.delete(keys.endpoint(plugin.node, id('c')));
  const settled = await calicoctl(plugin, ['ipam', 'check']);
  t.is(settled.code, 0, settled.stderr);
  t.regex(settled.stdout, new RegExp(`^${plugin.node}\\s+address without endpoint\\s+${pending.replace(/\./g, '\\.')}\\s+none\\s+allocated \\d+s ago`, 'm'));
  const allocations = (JSON.parse(await show()) as { node: string; allocations: { ip: string; handle: string; endpointId?: string }[] }[]);
  const held = new Map(allocations.flatMap((b) => b.allocations.map((a) => [a.ip, a] as const)));
  t.like(held.get(inUse), { handle: HANDLE, endpointId: id('a') }, 'the address in use is untouched');
  t.like(held.get(lateUse), { handle: HANDLE }, 'the address taken after the report is untouched');
  t.like(held.get(unallocated), { handle: `${HANDLE}#${id('b')}`, endpointId: id('b') }, 'claimed for its endpoint');
  t.false(held.has(leaked));
  t.false(held.has(goneIp));
  t.false(allocations.some((b) => b.node === gone), 'no block of the removed host is left');
  t.true(held.has(pending) && held.has(swarm));

  // A report that is not one is refused with a clear message.
  await writeFile(join(dir, 'bad.json'), '{"kind":"Something","findings":[]}');
  const bad = await calicoctl(plugin, ['ipam', 'release', '--from-report', join(dir, 'bad.json')]);
  t.is(bad.code, 1);
  t.regex(bad.stderr, /is not an ipam check report/);
  const both = await calicoctl(plugin, ['ipam', 'release']);
  t.regex(both.stderr, /usage: calicoctl ipam release --ip <address> \| --from-report <file>/);
});
