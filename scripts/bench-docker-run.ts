// Benchmark: wall time of `docker run --rm --net <net> <image> true` on a calico network against
// the same on a Docker bridge network and with `--net none`, interleaved (the order rotates every
// round) in one run against one dockerd, so the ratios are measured under the same conditions;
// plus the plugin's own per-method latency (p50/p99) on the container path, read from its debug
// timing lines. By default the dockerd is an isolated one the bench starts (no iptables, vfs);
// `--docker-socket /var/run/docker.sock` runs against a dockerd already running, such as the
// host's own with its defaults (iptables on, overlay2), which is what a new user measures.
//
//   npm run bench -- [--runs N] [--etcd] [--docker-socket PATH] [--no-native]
import { execFile } from 'node:child_process';
import { parseArgs } from 'node:util';
import Docker from 'dockerode';
import { pingOk, startDockerd } from '../test/harness/dockerd';
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
  'NetworkDriver.RevokeExternalConnectivity',
];

type Arm = 'bridge' | 'calico' | 'none';
const ARMS: readonly Arm[] = ['bridge', 'calico', 'none'];

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
  const { values } = parseArgs({
    options: {
      runs: { type: 'string', default: '30' },
      etcd: { type: 'boolean', default: false },
      'docker-socket': { type: 'string' },
      // The plugin without its native addon (ip and the exec helper): the before of the addon.
      'no-native': { type: 'boolean', default: false },
    },
  });
  const runs = Number(values.runs);
  if (!Number.isInteger(runs) || runs < 1) throw new Error('--runs must be a positive integer');
  const cleanups: (() => Promise<unknown>)[] = [];
  try {
    let socket = values['docker-socket'];
    if (socket === undefined) {
      const dockerd = await startDockerd();
      cleanups.push(() => dockerd.stop());
      socket = dockerd.socketPath;
    } else if (!(await pingOk(socket))) {
      throw new Error(`no dockerd answers on ${socket}`);
    }
    const docker = new Docker({ socketPath: socket });
    const etcd = values.etcd ? await startEtcd() : undefined;
    if (etcd !== undefined) cleanups.push(() => etcd.stop());
    await importTestImage(socket, IMAGE);
    // A dockerd the bench did not start keeps nothing of it.
    if (values['docker-socket'] !== undefined) cleanups.push(() => docker.getImage(IMAGE).remove());
    const plugin = await startPlugin({
      dockerSocket: socket,
      ipv4Pool: '198.18.200.0/22',
      env: { DEBUG: 'calico:server', ...(values['no-native'] && { CALICO_NATIVE: 'false' }) },
      ...(etcd !== undefined && { etcdEndpoints: etcd.endpoints }),
    });
    cleanups.push(() => plugin.cleanup());
    const calico = await docker.createNetwork({ Name: 'bench-calico', Driver: plugin.networkDriver, IPAM: { Driver: plugin.ipamDriver, Config: [] } });
    cleanups.push(() => calico.remove());
    const bridge = await docker.createNetwork({ Name: 'bench-bridge', Driver: 'bridge', IPAM: { Config: [{ Subnet: '198.18.210.0/24' }] } });
    cleanups.push(() => bridge.remove());
    const networkOf: Record<Arm, string> = { bridge: 'bench-bridge', calico: 'bench-calico', none: 'none' };

    // Warm-up: first runs pay for image and profile set-up on every side.
    for (let i = 0; i < 3; i++) for (const arm of ARMS) await dockerRun(socket, networkOf[arm]);
    const logStart = plugin.output().length;
    const times: Record<Arm, number[]> = { bridge: [], calico: [], none: [] };
    for (let i = 0; i < runs; i++) {
      // Rotate which goes first so drift in the machine's load hits every arm alike.
      const order = ARMS.map((_, k) => ARMS[(i + k) % ARMS.length] as Arm);
      for (const arm of order) times[arm].push(await dockerRun(socket, networkOf[arm]));
    }
    const medianOf = (arm: Arm): number => percentile(times[arm], 50);
    // The spread of the round-by-round ratio shows how much the machine's load moved it.
    const perRound = (to: Arm): number[] => times.calico.map((c, k) => c / (times[to][k] as number));
    const spread = (r: number[]): string => `rounds p10 ${percentile(r, 10).toFixed(3)}, p50 ${percentile(r, 50).toFixed(3)}, p90 ${percentile(r, 90).toFixed(3)}`;
    const lines = [
      `docker run --rm true, ${runs} interleaved rounds (${etcd === undefined ? 'embedded store' : 'etcd'}, ${values['no-native'] ? 'native addon off' : 'native addon on'}, ${values['docker-socket'] === undefined ? 'isolated dockerd' : `dockerd at ${socket}`}):`,
      ...ARMS.map((arm) => `  ${arm.padEnd(7)} median ${medianOf(arm).toFixed(1)} ms  p90 ${percentile(times[arm], 90).toFixed(1)} ms`),
      `  ratio calico/bridge (medians): ${(medianOf('calico') / medianOf('bridge')).toFixed(3)}  (target <= 1.00; ${spread(perRound('bridge'))})`,
      `  ratio calico/none   (medians): ${(medianOf('calico') / medianOf('none')).toFixed(3)}  (${spread(perRound('none'))})`,
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
