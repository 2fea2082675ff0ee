// Many hosts, one etcd, a pool with fewer blocks than hosts: 8 allocator processes (each its own
// etcd client, Allocator and node name) ask together for exactly the 256 addresses of a /24 with
// /26 blocks, so 4 hosts claim blocks and 4 must borrow. Every request must succeed, every
// address must be handed out once, and only a request beyond capacity hears "pool full". Each
// round runs in a fresh key root, so block claiming is raced every time.
import test from 'ava';
import { EtcdStore } from '../../datastore/etcd-store';
import { startEtcd, type EtcdHandle } from '../harness/etcd';
import { HostGroup, fillRound, type FillRound } from '../harness/ipam-hosts';
import { percentile } from '../../scripts/bench-report';

const HOSTS = 8;
const POOL = '10.99.0.0/24';
const PER_HOST = 32;
const ROUNDS = 30;

let etcd: EtcdHandle | undefined;

test.before(async () => {
  etcd = await startEtcd({ inMemory: true });
});

test.after.always(async () => {
  await etcd?.stop();
});


function describeRound(i: number, r: FillRound): string {
  const retries = r.retries === null ? '' : `, retries ${r.retries}`;
  const beyond = r.beyond === undefined ? 'not asked' : (r.beyond.errors[0]?.name ?? `got ${r.beyond.ips.join(',')}`);
  const head =
    `round ${String(i + 1).padStart(2)}: ${r.ips.length}/${r.requested} assigned in ${Math.round(r.wallMs)} ms ` +
    `(per request p50 ${percentile(r.opMs, 50).toFixed(1)} ms, p99 ${percentile(r.opMs, 99).toFixed(1)} ms), ` +
    `lost races ${r.lostWrites}${retries}, ${r.stored.blocks} blocks (${r.stored.affinities.join(' ')}), beyond capacity: ${beyond}`;
  return r.problems.length === 0 ? head : `${head}\n    FAILED: ${r.problems.join('\n    FAILED: ')}`;
}

test(`${HOSTS} hosts fill a /24 exactly`, async (t) => {
  t.timeout(170_000);
  if (etcd === undefined) throw new Error('etcd did not start');
  const started = performance.now();
  const admin = await EtcdStore.open({ endpoints: etcd.endpoints });
  t.teardown(() => admin.close());
  const group = await HostGroup.start({ count: HOSTS, endpoints: etcd.endpoints, pool: POOL, mode: 'allocator' });
  t.teardown(() => group.kill());
  t.log(`${HOSTS} workers ready in ${Math.round(performance.now() - started)} ms`);

  const failed: Array<{ round: number; problems: readonly string[] }> = [];
  const allMs: number[] = [];
  for (let i = 0; i < ROUNDS; i++) {
    const r = await fillRound(group, admin, { pool: POOL, perHost: PER_HOST });
    allMs.push(r.wallMs);
    t.log(describeRound(i, r));
    if (r.problems.length > 0) failed.push({ round: i + 1, problems: r.problems });
  }
  t.log(
    `${ROUNDS - failed.length}/${ROUNDS} rounds clean; round wall time p50 ${Math.round(percentile(allMs, 50))} ms, ` +
      `max ${Math.round(Math.max(...allMs))} ms; test ${((performance.now() - started) / 1000).toFixed(1)} s`,
  );
  t.deepEqual(
    failed.map((f) => `round ${f.round}: ${f.problems.join('; ')}`),
    [],
    `${failed.length} of ${ROUNDS} rounds were not clean`,
  );
});
