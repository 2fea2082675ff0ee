// Load: N containers created, started and removed by C parallel clients on one calico network,
// against an isolated dockerd and the real plugin (embedded store). Checks that no address is
// handed out twice (Docker's view and the datastore's) and that nothing is left at the end:
// allocations, endpoint/network/profile records, veths, host routes, chains, sets. Prints
// throughput and latency percentiles; exits non-zero on any leak, duplicate or failure.
//
//   npm run bench:churn -- [--containers 500] [--clients 8] [--window 4]
import { parseArgs } from 'node:util';
import { randomBytes } from 'node:crypto';
import Docker from 'dockerode';
import { baseline, churn, leftoverCount, leftovers, type ChurnResult, type Leftovers } from '../test/harness/churn';
import { createNetwork } from '../test/harness/containers';
import { startDockerd } from '../test/harness/dockerd';
import { importTestImage } from '../test/harness/image';
import { startPlugin } from '../test/harness/plugin';
import { reserveTestSubnet } from '../test/harness/test-subnets';
import { percentile } from './bench-report';

function positive(name: string, text: string | undefined): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1) throw new Error(`--${name} must be a positive integer`);
  return n;
}

export function churnReport(r: ChurnResult, l: Leftovers, clients: number, window: number): string[] {
  const stat = (v: number[]): string => `p50 ${percentile(v, 50).toFixed(0)} ms  p90 ${percentile(v, 90).toFixed(0)} ms  p99 ${percentile(v, 99).toFixed(0)} ms  max ${percentile(v, 100).toFixed(0)} ms`;
  const lines = [
    `${r.started} containers started, ${r.removed} removed by ${clients} clients (up to ${window} alive each; at most ${r.maxLive} alive at once) in ${(r.wallMs / 1000).toFixed(1)} s`,
    `  throughput   ${((r.removed / r.wallMs) * 1000).toFixed(2)} containers/s (create+start+remove)`,
    `  start        ${stat(r.startMs)}   (create + start + inspect)`,
    `  remove       ${stat(r.removeMs)}`,
    `  datastore samples ${r.samples} (${r.sampleErrors.length} unanswered); duplicates ${r.duplicates.length}; address/endpoint mismatches ${r.mismatches.length}; Docker failures ${r.failures.length}`,
    `  left at the end: ${Object.entries(l).map(([k, v]) => `${k} ${(v as string[]).length}`).join(', ')}`,
  ];
  for (const [what, list] of [['duplicate', r.duplicates], ['mismatch', r.mismatches], ['failure', r.failures], ...Object.entries(l).map(([k, v]) => [`left ${k}`, v as string[]])] as [string, string[]][]) {
    for (const x of list.slice(0, 10)) lines.push(`  ${what}: ${x}`);
  }
  return lines;
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: {
    containers: { type: 'string', default: '500' },
    clients: { type: 'string', default: '8' },
    window: { type: 'string', default: '4' },
  } });
  const containers = positive('containers', values.containers);
  const clients = positive('clients', values.clients);
  const window = positive('window', values.window);
  const cleanups: (() => Promise<unknown>)[] = [];
  let ok = false;
  try {
    const dockerd = await startDockerd();
    cleanups.push(() => dockerd.stop());
    const image = 'calico-bench/busybox:latest';
    await importTestImage(dockerd.socketPath, image);
    const pool = await reserveTestSubnet();
    const plugin = await startPlugin({ dockerSocket: dockerd.socketPath, ipv4Pool: pool });
    cleanups.push(() => plugin.cleanup());
    const docker = new Docker({ socketPath: dockerd.socketPath });
    const base = await baseline(plugin);
    const name = `churn-${randomBytes(3).toString('hex')}`;
    const net = await createNetwork(docker, { name, driver: plugin.networkDriver, ipamDriver: plugin.ipamDriver });
    let removed = false;
    cleanups.push(async () => {
      if (removed) return;
      const all = await docker.listContainers({ all: true });
      await Promise.all(all.map((x) => docker.getContainer(x.Id).remove({ force: true }).catch(() => undefined)));
      await net.remove();
    });
    process.stderr.write(`churn: ${containers} containers, ${clients} clients, pool ${pool}\n`);
    const result = await churn({ docker, image, plugin, network: name, containers, clients, window, progress: (l) => process.stderr.write(`  ${l}\n`) });
    await net.remove();
    removed = true;
    const left = await leftovers(plugin, [pool.replace(/0\/24$/, '')], base);
    process.stdout.write(`${churnReport(result, left, clients, window).join('\n')}\n`);
    ok = result.started === containers && result.failures.length === 0 && result.duplicates.length === 0 && result.mismatches.length === 0 && leftoverCount(left) === 0;
    process.stdout.write(ok ? 'PASS: zero leaks, zero duplicates\n' : 'FAIL\n');
  } finally {
    for (const c of cleanups.reverse()) await c().catch((err: unknown) => process.stderr.write(`cleanup: ${String(err)}\n`));
  }
  if (!ok) process.exitCode = 1;
}

if (require.main === module) {
  main().then(
    () => process.exit(process.exitCode ?? 0),
    (err: unknown) => {
      process.stderr.write(`bench:churn: ${err instanceof Error ? err.message : String(err)}\n`);
      process.exit(1);
    },
  );
}
