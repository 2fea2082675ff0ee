// Benchmark: wall time of `docker run --rm --net <net> <image> true` on a calico network against
// the same on a Docker bridge network, interleaved in one run against one isolated dockerd, so the
// ratio is measured under the same conditions; plus the plugin's own per-method latency (p50/p99)
// on the Join/Leave path, read from its debug timing lines.
//
//   npm run bench -- [--runs N] [--etcd]
import { execFile } from 'node:child_process';
import { parseArgs } from 'node:util';
import Docker from 'dockerode';
import { startDockerd } from '../test/harness/dockerd';
import { startEtcd } from '../test/harness/etcd';
import { importTestImage } from '../test/harness/image';
import { startPlugin } from '../test/harness/plugin';
import { percentile } from './bench-report';

const DOCKER_CLI = '/usr/bin/docker';
const IMAGE = 'calico-bench/busybox:latest';
const PATH_METHODS = [
  'IpamDriver.RequestAddress',
  'NetworkDriver.CreateEndpoint',
  'NetworkDriver.Join',
  'NetworkDriver.Leave',
  'NetworkDriver.DeleteEndpoint',
  'IpamDriver.ReleaseAddress',
];

function dockerRun(socket: string, network: string): Promise<number> {
  const started = process.hrtime.bigint();
  return new Promise((resolve, reject) => {
    execFile(DOCKER_CLI, ['-H', `unix://${socket}`, 'run', '--rm', '--net', network, IMAGE, 'true'], (err, _out, stderr) => {
      if (err) reject(new Error(`docker run on ${network}: ${stderr || err.message}`));
      else resolve(Number(process.hrtime.bigint() - started) / 1e6);
    });
  });
}


/** Per-method durations from the server's debug lines: "<name> <Method> ok in <N>us". */
export function methodLatencies(log: string): Map<string, number[]> {
  const out = new Map<string, number[]>();
  for (const m of log.matchAll(/ (\w+\.\w+) ok in (\d+)us/g)) {
    const list = out.get(m[1] as string) ?? [];
    list.push(Number(m[2]) / 1000);
    out.set(m[1] as string, list);
  }
  return out;
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { runs: { type: 'string', default: '30' }, etcd: { type: 'boolean', default: false } } });
  const runs = Number(values.runs);
  if (!Number.isInteger(runs) || runs < 1) throw new Error('--runs must be a positive integer');
  const cleanups: (() => Promise<unknown>)[] = [];
  try {
    const dockerd = await startDockerd();
    cleanups.push(() => dockerd.stop());
    const etcd = values.etcd ? await startEtcd() : undefined;
    if (etcd !== undefined) cleanups.push(() => etcd.stop());
    await importTestImage(dockerd.socketPath, IMAGE);
    const plugin = await startPlugin({
      dockerSocket: dockerd.socketPath,
      ipv4Pool: '198.18.200.0/22',
      env: { DEBUG: 'calico:server' },
      ...(etcd !== undefined && { etcdEndpoints: etcd.endpoints }),
    });
    cleanups.push(() => plugin.cleanup());
    const docker = new Docker({ socketPath: dockerd.socketPath });
    const calico = await docker.createNetwork({ Name: 'bench-calico', Driver: plugin.networkDriver, IPAM: { Driver: plugin.ipamDriver, Config: [] } });
    cleanups.push(() => calico.remove());
    const bridge = await docker.createNetwork({ Name: 'bench-bridge', Driver: 'bridge', IPAM: { Config: [{ Subnet: '198.18.210.0/24' }] } });
    cleanups.push(() => bridge.remove());

    // Warm-up: first runs pay for image and profile set-up on both sides.
    for (let i = 0; i < 3; i++) {
      await dockerRun(dockerd.socketPath, 'bench-bridge');
      await dockerRun(dockerd.socketPath, 'bench-calico');
    }
    const logStart = plugin.output().length;
    const times = { bridge: [] as number[], calico: [] as number[] };
    for (let i = 0; i < runs; i++) {
      // Alternate which goes first so drift in the machine's load hits both equally.
      const order: ('bridge' | 'calico')[] = i % 2 === 0 ? ['bridge', 'calico'] : ['calico', 'bridge'];
      for (const kind of order) times[kind].push(await dockerRun(dockerd.socketPath, `bench-${kind}`));
    }
    const bridgeMedian = percentile(times.bridge, 50);
    const calicoMedian = percentile(times.calico, 50);
    const lines = [
      `docker run --rm true, ${runs} interleaved runs each (${etcd === undefined ? 'embedded store' : 'etcd'}):`,
      `  bridge  median ${bridgeMedian.toFixed(1)} ms  p90 ${percentile(times.bridge, 90).toFixed(1)} ms`,
      `  calico  median ${calicoMedian.toFixed(1)} ms  p90 ${percentile(times.calico, 90).toFixed(1)} ms`,
      `  ratio calico/bridge (median): ${(calicoMedian / bridgeMedian).toFixed(3)}  (target <= 1.05)`,
      'plugin latency per method (ms):',
    ];
    const latencies = methodLatencies(plugin.output().slice(logStart));
    for (const method of PATH_METHODS) {
      const l = latencies.get(method) ?? [];
      lines.push(`  ${method.padEnd(30)} n=${String(l.length).padStart(3)}  p50 ${percentile(l, 50).toFixed(2).padStart(6)}  p99 ${percentile(l, 99).toFixed(2).padStart(6)}`);
    }
    process.stdout.write(`${lines.join('\n')}\n`);
  } finally {
    for (const c of cleanups.reverse()) await c().catch((err: unknown) => process.stderr.write(`cleanup: ${String(err)}\n`));
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`bench: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  },
);
