// Benchmark: how fast the cluster learns of a new container and a new block, on three hosts of the
// multi-host harness (one subnet, one etcd on the fabric, each host its own dockerd and plugin):
//   (a) from `docker run` returning on host1 to the container answering a ping from a container
//       on host3 (its policy and host3's route in place): the address is chosen up front (--ip)
//       and host3 pings it every 20 ms from before the run, so the figure is within 20 ms;
//   (b) from a block claimed for host1 (an allocator acting as host1 claims it) to host3's kernel
//       having the route to it via host1 (polled every 10 ms).
//
//   npm run bench:multihost -- [--runs N]     (default 20)
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import type Docker from 'dockerode';
import { addressOn, runContainer } from '../test/harness/containers';
import { DEFAULT_IPV4_POOL, startCluster, type Host } from '../test/harness/multihost';
import { blockRouteLags, ROUTE_PROTOCOL } from '../test/harness/multihost-probes';
import { ms, percentile, printTable } from './bench-report';

const PING_INTERVAL_S = 0.02;
const TARGET_P99_MS = 1_000;

/** When (performance.now()) the prober first hears from `ip`, pinging it every 20 ms for 8 s. */
async function firstReply(prober: Docker.Container, ip: string): Promise<number> {
  const e = await prober.exec({ Cmd: ['ping', '-i', String(PING_INTERVAL_S), '-w', '8', '-c', '400', ip], AttachStdout: true, AttachStderr: true });
  const stream = await e.start({ hijack: true, stdin: false });
  return new Promise((resolve, reject) => {
    let heard: number | undefined;
    stream.on('data', (chunk: Buffer) => {
      if (heard === undefined && /seq=\d+/.test(chunk.toString())) heard = performance.now();
    });
    stream.once('end', () => (heard === undefined ? reject(new Error(`${ip} never answered the prober`)) : resolve(heard)));
    stream.once('error', reject);
  });
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { runs: { type: 'string', default: '20' } } });
  const runs = Number(values.runs);
  if (!Number.isInteger(runs) || runs < 1 || runs > 1_000) throw new Error('--runs must be an integer from 1 to 1000');
  const started = performance.now();
  const cluster = await startCluster({ hosts: 3, subnets: ['a', 'a', 'a'] });
  const stop = async (): Promise<void> => cluster.stop();
  process.once('SIGINT', () => void stop().then(() => process.exit(130)));
  process.once('SIGTERM', () => void stop().then(() => process.exit(143)));
  try {
    const [h1, , h3] = cluster.hosts as [Host, Host, Host];
    // --subnet (the pool): Docker takes --ip only on networks with a configured subnet.
    await Promise.all(cluster.hosts.map((h) => h.run(['docker', 'network', 'create', '-d', 'calico', '--ipam-driver', 'calico-ipam', '--subnet', DEFAULT_IPV4_POOL, 'net1'])));
    const prober = await runContainer(h3.docker, { image: cluster.image, network: 'net1' });
    const firstOnHost1 = await runContainer(h1.docker, { image: cluster.image, network: 'net1' }); // host1 holds its block already

    // (a) docker run on host1 → reachable from host3. The address is chosen up front (--ip, in
    // host1's block), so host3 is already pinging it, every 20 ms, when docker run starts; the
    // first reply is timestamped as it arrives.
    const { ipv4: first } = await addressOn(firstOnHost1, 'net1');
    const base = first.split('.').map(Number) as [number, number, number, number];
    const reach: number[] = [];
    for (let i = 0; i < runs; i++) {
      const ip = `${base[0]}.${base[1]}.${base[2]}.${base[3] + 1 + (i % 60)}`;
      const replied = firstReply(prober, ip);
      replied.catch(() => undefined); // awaited below; a failed run must not leave it unhandled
      await sleep(300);
      const c = await runContainer(h1.docker, { image: cluster.image, network: 'net1', ip });
      const returned = performance.now();
      reach.push((await replied) - returned);
      await c.remove({ force: true });
    }

    // (b) block claimed for host1 → route on host3
    const routeLag = await blockRouteLags(cluster, h1, h3, ROUTE_PROTOCOL, runs);

    const p = (xs: number[], q: number): number => percentile(xs, q);
    console.log(`multi-host benchmark: 3 hosts, ${runs} runs each, ${((performance.now() - started) / 1000).toFixed(0)} s`);
    printTable([
      { what: 'docker run (host1) → reachable from host3, p50', value: ms(p(reach, 50)) },
      { what: '  p99', value: ms(p(reach, 99)), target: `< ${TARGET_P99_MS} ms`, pass: p(reach, 99) < TARGET_P99_MS, detail: `max ${ms(Math.max(...reach))}` },
      { what: 'block claimed (host1) → route on host3, p50', value: ms(p(routeLag, 50)) },
      { what: '  p99', value: ms(p(routeLag, 99)), detail: `max ${ms(Math.max(...routeLag))}` },
    ]);
    console.log(JSON.stringify({ bench: 'multihost', runs, reachMs: { p50: p(reach, 50), p99: p(reach, 99) }, routeMs: { p50: p(routeLag, 50), p99: p(routeLag, 99) } }));
  } finally {
    await stop();
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
