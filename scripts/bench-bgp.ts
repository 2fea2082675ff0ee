// Benchmark: from a block claimed for host1 to its route in host3's kernel, in `vxlan` mode and in
// `bird` mode, side by side in one run. Three hosts of the multi-host harness each time, host3 on
// the other subnet behind the router:
//   vxlan: the default pool with vxlanMode CrossSubnet; host3's routes manager writes
//          `<block> via host1 dev vxlan.calico` (proto 80) from the datastore;
//   bird:  the mesh off, each host peering with its subnet's router address; the router runs
//          BIRD (AS 65000); host1's BIRD announces the block, the router passes it on, host3's
//          BIRD writes `<block> via <router>` (proto bird).
// An allocator acting as host1 claims a fresh block (one address in it) each run; host3's kernel is
// polled every 10 ms. The clusters run one after the other, not at once (2 cores).
//
//   npm run bench:bgp -- [--runs N]     (default 10)
import { parseArgs } from 'node:util';
import { calicoctl } from '../test/harness/plugin';
import { startCluster, type Cluster, type Host } from '../test/harness/multihost';
import { blockRouteLags } from '../test/harness/multihost-probes';
import { ROUTER_AS, TEST_BGP_ENV, startRouterBird } from '../test/harness/bgp';
import { ms, percentile, printTable } from './bench-report';

async function withCluster<T>(start: () => Promise<Cluster>, body: (c: Cluster) => Promise<T>): Promise<T> {
  const c = await start();
  const stop = (): void => void c.stop().then(() => process.exit(130));
  process.once('SIGINT', stop);
  try {
    return await body(c);
  } finally {
    process.off('SIGINT', stop);
    await c.stop();
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { runs: { type: 'string', default: '10' } } });
  const runs = Number(values.runs);
  if (!Number.isInteger(runs) || runs < 1 || runs > 150) throw new Error('--runs must be an integer from 1 to 150');
  const started = performance.now();

  const vxlan = await withCluster(
    () => startCluster({ hosts: 3, pluginEnv: { CALICO_IPV4POOL_VXLAN: 'CrossSubnet' } }),
    (c) => blockRouteLags(c, c.hosts[0] as Host, c.hosts[2] as Host, '80', runs),
  );
  const bird = await withCluster(
    () => startCluster({ hosts: 3, pluginEnv: TEST_BGP_ENV }),
    async (c) => {
      const ctl = async (args: string[]): Promise<void> => {
        const r = await calicoctl({ env: c.ctlEnv }, args);
        if (r.code !== 0) throw new Error(`calicoctl ${args.join(' ')}: ${r.stderr}`);
      };
      await ctl(['bgp', 'config', 'set', '--mesh', 'off']);
      for (const h of c.hosts) await ctl(['bgp', 'peer', 'add', h.gateway, '--as', String(ROUTER_AS), '--node', h.name]);
      const router = await startRouterBird(c, c.hosts);
      // Sessions up before the clock starts: wait for the first block's route to cross.
      await blockRouteLags(c, c.hosts[0] as Host, c.hosts[2] as Host, 'bird', 1);
      try {
        return await blockRouteLags(c, c.hosts[0] as Host, c.hosts[2] as Host, 'bird', runs);
      } finally {
        await router.stop();
      }
    },
  );

  const p = (xs: number[], q: number): number => percentile(xs, q);
  console.log(`BGP vs VXLAN: block claimed on host1 → route in host3's kernel (host3 on the other subnet), ${runs} runs each, ${((performance.now() - started) / 1000).toFixed(0)} s`);
  printTable([
    { what: 'vxlan (datastore → routes manager), p50', value: ms(p(vxlan, 50)) },
    { what: '  p99', value: ms(p(vxlan, 99)), detail: `max ${ms(Math.max(...vxlan))}` },
    { what: 'bird (host1 BIRD → router → host3 BIRD), p50', value: ms(p(bird, 50)) },
    { what: '  p99', value: ms(p(bird, 99)), detail: `max ${ms(Math.max(...bird))}` },
  ]);
  console.log(JSON.stringify({ bench: 'bgp', runs, vxlanMs: { p50: p(vxlan, 50), p99: p(vxlan, 99) }, birdMs: { p50: p(bird, 50), p99: p(bird, 99) } }));
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
