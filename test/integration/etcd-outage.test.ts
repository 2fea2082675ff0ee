// etcd outages against real etcd processes: a hung member (SIGSTOP) and a cluster losing its
// leader while hosts allocate and release addresses.
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { connect, createServer, type Socket } from 'node:net';
import { Etcd3 } from 'etcd3';
import { SyncLoop } from '../../agent/sync-loop';
import { EtcdStore } from '../../datastore/etcd-store';
import { Keys } from '../../datastore/keys';
import { Allocator } from '../../ipam/allocator';
import { DatastoreUnavailableError } from '../../lib/errors';
import { withRequestDeadline } from '../../lib/request-deadline';
import { logger } from '../../lib/log';
import { startEtcd, startEtcdCluster, type EtcdClusterHandle } from '../harness/etcd';
import { FakeManager } from '../harness/fake-manager';
import { reserveTestSubnet } from '../harness/test-subnets';

const TIMEOUT_MS = 2_000;
/** Scheduling on a loaded 2-core machine, on top of the bound. */
const SLACK_MS = 1_500;

async function timed<T>(p: Promise<T>): Promise<{ ms: number; result: PromiseSettledResult<T> }> {
  const t0 = Date.now();
  const [result] = await Promise.allSettled([p]);
  if (result === undefined) throw new Error('unreachable');
  return { ms: Date.now() - t0, result };
}

/** Retries `op` until it succeeds or `ms` pass (etcd3 holds a failed member back for 5 s). */
async function eventually<T>(ms: number, op: () => Promise<T>): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      return await op();
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 250));
    }
  }
}

/** Stores whose bound is not what a test checks get a patient one: on a loaded machine etcd is
 * slow, and those tests are about members failing, not about time. */
const PATIENT = { dialTimeoutMs: 30_000, requestTimeoutMs: 20_000 };

test('a hung etcd (SIGSTOP): reads and writes fail within CALICO_DATASTORE_TIMEOUT naming etcd, and work after SIGCONT', async (t) => {
  const etcd = await startEtcd({ inMemory: true });
  t.teardown(() => etcd.stop());
  const patient = await EtcdStore.open({ endpoints: etcd.endpoints, ...PATIENT });
  t.teardown(() => patient.close());
  const store = await EtcdStore.open({ endpoints: etcd.endpoints, dialTimeoutMs: PATIENT.dialTimeoutMs, requestTimeoutMs: TIMEOUT_MS });
  t.teardown(() => store.close());
  const prefix = `/outage-${randomBytes(3).toString('hex')}`;
  const before = await patient.create(`${prefix}/a`, 'one');
  t.truthy(before);
  etcd.signal('SIGSTOP');
  try {
    const ops: [string, Promise<unknown>][] = [
      ['get', store.get(`${prefix}/a`)],
      ['list', store.list(`${prefix}/`)],
      ['create', store.create(`${prefix}/b`, 'two')],
      ['update', store.update(`${prefix}/a`, 'changed', before?.revision ?? '0')],
      ['commit', store.commit([{ type: 'create', key: `${prefix}/c`, value: 'three' }])],
    ];
    for (const [what, p] of ops) {
      const { ms, result } = await timed(p);
      t.is(result.status, 'rejected', `${what} fails while etcd hangs`);
      const err: unknown = result.status === 'rejected' ? result.reason : undefined;
      t.true(err instanceof DatastoreUnavailableError, `${what}: ${String(err)}`);
      t.regex(err instanceof Error ? err.message : '', /^etcd at http:\/\/127\.0\.0\.1:\d+: /, `${what} names the datastore`);
      t.true(ms <= TIMEOUT_MS + SLACK_MS, `${what} failed after ${ms} ms (bound ${TIMEOUT_MS} ms)`);
      t.log(`${what}: ${ms} ms: ${err instanceof Error ? err.message : ''}`);
    }
  } finally {
    etcd.signal('SIGCONT');
  }
  // Back: the same client works again.
  t.truthy(await eventually(15_000, () => store.get(`${prefix}/a`)));
  // Writes sent while it hung may have been applied on resume (etcd read them off the socket):
  // that is what "outcome unknown" means, and why IPAM leaves such leftovers to the reconciler.
  t.log(`written while hung and found afterwards: ${(await patient.list(`${prefix}/`)).items.map((kv) => kv.key.slice(prefix.length)).join(' ')}`);
});

/** The member etcd currently follows as leader. */
async function leaderOf(cluster: EtcdClusterHandle): Promise<number> {
  for (const [i, m] of cluster.members.entries()) {
    const client = new Etcd3({ hosts: m.endpoint });
    try {
      const status = await client.maintenance.status();
      if (status.leader === status.header.member_id) return i;
    } finally {
      client.close();
    }
  }
  throw new Error('no leader');
}

test('plugin requests queued behind a hung etcd each fail within their own deadline, not one bound after another', async (t) => {
  const etcd = await startEtcd({ inMemory: true });
  t.teardown(() => etcd.stop());
  // Each operation may wait 3 bounds; a request is allowed one.
  const store = await EtcdStore.open({ endpoints: etcd.endpoints, dialTimeoutMs: PATIENT.dialTimeoutMs, requestTimeoutMs: 3 * TIMEOUT_MS });
  t.teardown(() => store.close());
  const keys = new Keys(`/queue-${randomBytes(3).toString('hex')}`);
  const allocator = new Allocator({ store, keys, node: 'queue-node' });
  await allocator.addPool({ cidr: await reserveTestSubnet() });
  await allocator.autoAssign({ family: 4, owner: { handle: 'warm', kind: 'container' } });
  etcd.signal('SIGSTOP');
  let background;
  let requests;
  try {
    // Work of no request (bookkeeping, the reconciler) holds the queue with an operation's bound;
    // then, as Docker sends them, three address requests at once under the plugin's deadline.
    background = timed(allocator.autoAssign({ family: 4, owner: { handle: 'background', kind: 'container' } }));
    requests = await Promise.all(Array.from({ length: 3 }, (_, i) =>
      timed(withRequestDeadline(TIMEOUT_MS, () => allocator.autoAssign({ family: 4, owner: { handle: `request-${i}`, kind: 'container' } })))));
  } finally {
    etcd.signal('SIGCONT');
  }
  for (const [i, { ms, result }] of requests.entries()) {
    const err: unknown = result.status === 'rejected' ? result.reason : undefined;
    t.log(`request ${i}: ${ms} ms: ${err instanceof Error ? err.message : result.status}`);
    t.true(err instanceof DatastoreUnavailableError, `request ${i}: ${String(err)}`);
    t.regex(err instanceof Error ? err.message : '', /^etcd at http:\/\/127\.0\.0\.1:\d+: /, `request ${i} names the datastore`);
    t.true(ms <= TIMEOUT_MS + SLACK_MS, `request ${i} failed after ${ms} ms (bound ${TIMEOUT_MS} ms)`);
  }
  t.log(`background operation: ${(await background).ms} ms`);
  // Back: the queue moves again.
  t.truthy(await eventually(15_000, () => allocator.autoAssign({ family: 4, owner: { handle: 'after', kind: 'container' } })));
});

test('a request whose deadline has passed sends nothing to etcd', async (t) => {
  const etcd = await startEtcd({ inMemory: true });
  t.teardown(() => etcd.stop());
  const store = await EtcdStore.open({ endpoints: etcd.endpoints, ...PATIENT });
  t.teardown(() => store.close());
  const key = `/spent-${randomBytes(3).toString('hex')}/a`;
  const spent = <T>(op: () => Promise<T>): Promise<T> => withRequestDeadline(1, async () => {
    await new Promise((r) => setTimeout(r, 20));
    return op();
  });
  await t.throwsAsync(spent(() => store.create(key, 'x')), { instanceOf: DatastoreUnavailableError, message: /^etcd at .*: create .*: not sent: the request's 1 ms \(CALICO_DATASTORE_TIMEOUT\) ran out before it$/ });
  await t.throwsAsync(spent(() => store.get(key)), { instanceOf: DatastoreUnavailableError, message: /not sent/ });
  t.is(await store.get(key), undefined, 'the create was never sent');
  // Work a request started but did not await runs without its deadline once it is answered.
  let later: Promise<unknown> | undefined;
  await withRequestDeadline(1, async () => {
    later = new Promise((r) => setTimeout(r, 20)).then(() => store.create(key, 'later'));
  });
  t.truthy(await later, 'a write after the request was answered has its own bound');
});

test('3-member etcd, its leader killed during IPAM churn: no operation fails, no address is held twice, nothing leaks', async (t) => {
  const cluster = await startEtcdCluster(3);
  t.teardown(() => cluster.stop());
  const keys = new Keys(`/churn-${randomBytes(3).toString('hex')}`);
  const pool = await reserveTestSubnet();
  const stores = await Promise.all(['a', 'b'].map(() => EtcdStore.open({ endpoints: cluster.endpoints, ...PATIENT })));
  t.teardown(() => Promise.all(stores.map((s) => s.close())));
  const allocators = stores.map((store, i) => new Allocator({ store, keys, node: `churn-node-${i}` }));
  await allocators[0]?.addPool({ cidr: pool, blockSize: 28 });

  const held = new Map<string, string>(); // ip -> handle
  const duplicates: string[] = [];
  const failures: string[] = [];
  let done = 0;
  let stop = false;
  const worker = async (allocator: Allocator, name: string): Promise<void> => {
    for (let i = 0; !stop; i++) {
      const handle = `${name}-${i}`;
      try {
        const a = await allocator.autoAssign({ family: 4, pools: [pool], owner: { handle, kind: 'container' } });
        const other = held.get(a.ip);
        if (other !== undefined) duplicates.push(`${a.ip} held by ${other} and ${handle}`);
        held.set(a.ip, handle);
        await new Promise((r) => setTimeout(r, 5));
        held.delete(a.ip);
        const r = await allocator.release({ ip: a.ip, requester: { handle } });
        if (r.status !== 'released') failures.push(`release ${a.ip} by ${handle}: ${r.status}`);
        done++;
      } catch (err) {
        failures.push(`${handle}: ${err instanceof Error ? err.message : String(err)}`);
      }
    }
  };
  const workers = allocators.flatMap((a, i) => [0, 1, 2].map((w) => worker(a, `n${i}w${w}`)));
  await new Promise((r) => setTimeout(r, 2_000));
  const leader = await leaderOf(cluster);
  const doneBeforeKill = done;
  const victim = cluster.members[leader];
  victim?.signal('SIGKILL');
  await victim?.exited();
  await new Promise((r) => setTimeout(r, 6_000));
  stop = true;
  await Promise.all(workers);

  const stats = stores.map((s) => s.stats);
  t.log(`${done} assign+release pairs (${doneBeforeKill} before the leader, member ${victim?.name ?? '?'}, was killed); store stats: ${JSON.stringify(stats)}`);
  t.deepEqual(failures, [], 'no operation failed');
  t.deepEqual(duplicates, [], 'no address handed out twice');
  t.true(done > doneBeforeKill, 'work went on after the kill');
  const blocks = await allocators[0]?.listBlocks();
  t.true((blocks?.length ?? 0) > 0);
  t.deepEqual(blocks?.filter((b) => b.used > 0).map((b) => `${b.block.cidr}: ${b.used} used`), [], 'nothing leaked');
});

/** A TCP proxy in front of etcd that can lose traffic in one direction for a moment, then cut
 * every connection: a member dying mid-request, as the client sees it. */
interface LossyProxy {
  readonly endpoint: string;
  /** Loses traffic in one direction for `ms`, then cuts every connection. */
  lose(direction: 'answers' | 'requests', ms: number): Promise<void>;
  /** Cuts every connection and refuses new ones for `ms`: etcd unreachable. */
  down(ms: number): Promise<void>;
  close(): Promise<void>;
}

async function lossyProxy(target: string): Promise<LossyProxy> {
  const url = new URL(target);
  const pairs = new Set<{ client: Socket; server: Socket }>();
  let losing: 'answers' | 'requests' | undefined;
  let refusing = false;
  const server = createServer((client) => {
    if (refusing) {
      client.destroy();
      return;
    }
    const upstream = connect({ host: url.hostname, port: Number(url.port) });
    const pair = { client, server: upstream };
    pairs.add(pair);
    client.on('data', (b) => {
      if (losing !== 'requests') upstream.write(b);
    });
    upstream.on('data', (b) => {
      if (losing !== 'answers') client.write(b);
    });
    const end = (): void => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on('close', end).on('error', end);
    upstream.on('close', end).on('error', end);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('no proxy address');
  return {
    endpoint: `http://127.0.0.1:${address.port}`,
    lose: async (direction, ms) => {
      losing = direction;
      await new Promise((r) => setTimeout(r, ms));
      for (const p of pairs) p.client.destroy();
      losing = undefined;
    },
    down: async (ms) => {
      refusing = true;
      for (const p of pairs) p.client.destroy();
      await new Promise((r) => setTimeout(r, ms));
      refusing = false;
    },
    close: async () => {
      for (const p of pairs) p.client.destroy();
      await new Promise((r) => server.close(r));
    },
  };
}

test('a write whose answer is lost is settled by reading back: found applied, never applied twice', async (t) => {
  const etcd = await startEtcd({ inMemory: true });
  t.teardown(() => etcd.stop());
  const proxy = await lossyProxy(etcd.endpoints[0] ?? '');
  t.teardown(() => proxy.close());
  const store = await EtcdStore.open({ endpoints: [proxy.endpoint], ...PATIENT });
  t.teardown(() => store.close());
  const key = `/settle-${randomBytes(3).toString('hex')}`;
  const created = await store.create(key, 'v1');
  if (created === undefined) throw new Error('create failed');

  // etcd commits the compare-and-swap, its answer never arrives. A blind retry would now see a
  // false conflict and make the caller's loop apply its change again.
  const losing = proxy.lose('answers', 300);
  const updated = await store.update(key, 'v2', created.revision);
  await losing;
  t.truthy(updated, 'reported as written');
  t.like(store.stats, { unknownOutcomes: 1, foundApplied: 1, resent: 0 });
  const check = new Etcd3({ hosts: etcd.endpoints });
  t.teardown(() => check.close());
  const kv = (await check.get(key).exec()).kvs[0];
  t.is(kv?.value.toString(), 'v2');
  t.is(kv?.version, '2', 'written exactly once after the create');
  t.is(kv?.mod_revision, updated?.revision, 'the revision it committed at');

  // The request never reaches etcd: proven not applied, then sent again with the same condition.
  const losingRequest = proxy.lose('requests', 300);
  const again = await store.update(key, 'v3', kv?.mod_revision ?? '0');
  await losingRequest;
  t.truthy(again);
  t.like(store.stats, { unknownOutcomes: 2, foundApplied: 1, resent: 1 });
  const kv3 = (await check.get(key).exec()).kvs[0];
  t.is(kv3?.value.toString(), 'v3');
  t.is(kv3?.version, '3');

  // A definite conflict is never read back.
  t.is(await store.update(key, 'v4', created.revision), undefined);
  t.is(store.stats.unknownOutcomes, 2);
});

test('the agent keeps what it programmed while etcd is unreachable, and resyncs when it returns', async (t) => {
  const etcd = await startEtcd({ inMemory: true });
  t.teardown(() => etcd.stop());
  const proxy = await lossyProxy(etcd.endpoints[0] ?? '');
  t.teardown(() => proxy.close());
  const direct = await EtcdStore.open({ endpoints: etcd.endpoints, ...PATIENT });
  t.teardown(() => direct.close());
  const agentStore = await EtcdStore.open({ endpoints: [proxy.endpoint], dialTimeoutMs: PATIENT.dialTimeoutMs, requestTimeoutMs: TIMEOUT_MS });
  t.teardown(() => agentStore.close());
  const keys = new Keys(`/sync-${randomBytes(3).toString('hex')}`);
  await direct.create(`${keys.root}/a/1`, 'x');
  const manager = new FakeManager('recording', `${keys.root}/a/`);
  const loop = new SyncLoop(agentStore, keys, [manager], logger('etcd-outage-test'));
  t.teardown(() => loop.stop());
  await loop.start();
  t.deepEqual(manager.calls, ['clear', 'update 1', 'resync', 'apply x']);
  manager.calls.length = 0;

  const outage = proxy.down(4_000);
  await new Promise((r) => setTimeout(r, 500));
  await direct.create(`${keys.root}/a/2`, 'y'); // changed while this host cannot see etcd
  await new Promise((r) => setTimeout(r, 2_000));
  t.deepEqual(manager.calls, [], 'nothing cleared or rewritten while etcd is unreachable');
  t.regex(loop.status().failure ?? '', /watch lost|resync failed/, 'readiness says why the kernel may lag');
  await outage;

  await eventually(20_000, async () => {
    const status = loop.status();
    if (status.failure !== undefined) throw new Error(`not resynced yet: ${status.failure}`);
  });
  // A resync whose new watch broke on a stale connection is followed by another: each is a full
  // listing, and no apply ever ran with less than etcd holds.
  t.deepEqual(manager.calls.slice(-5), ['clear', 'update 1', 'update 2', 'resync', 'apply x,y'], 'a full resync with what changed meanwhile');
  t.deepEqual(manager.calls.filter((c) => c.startsWith('apply') && c !== 'apply x,y'), []);
});
