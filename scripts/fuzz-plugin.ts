// Fuzzes a running plugin (the real daemon started by the test harness, embedded store) on both
// sockets, and in single-socket mode (a managed plugin's): random valid-shaped and malformed
// requests to every method of both interfaces, from a seeded PRNG (the seed is printed; with
// --concurrency 1 a run is reproducible from it). Fails if the plugin crashes, leaves a request
// unanswered, answers an error under the wrong key or without a message, fails unexpectedly
// (internal error), or leaves anything behind once what valid requests made is undone.
//
//   npm run fuzz -- [--requests 10000] [--single 2000] [--seed N] [--concurrency 1]
import { randomInt } from 'node:crypto';
import { parseArgs } from 'node:util';
import { leftoverCount } from '../test/harness/churn';
import { fuzzHarnessPlugin, type PluginFuzzResult } from '../test/harness/fuzz';
import { percentile } from './bench-report';

function count(name: string, text: string | undefined, min: number): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < min) throw new Error(`--${name} must be an integer >= ${min}`);
  return n;
}

/** Whether a run found nothing wrong. */
export function fuzzPassed(r: PluginFuzzResult): boolean {
  return r.result.crashesOrHangs.length === 0 && r.result.violations.length === 0 && r.result.cleanupProblems.length === 0 &&
    leftoverCount(r.left) === 0 && r.exitCode === 0 && r.errorLines.length === 0;
}

export function fuzzReport(label: string, seed: number, r: PluginFuzzResult): string[] {
  const x = r.result;
  const lines = [
    `${label}: ${x.sent} requests, seed ${seed}, in ${(x.wallMs / 1000).toFixed(1)} s (${((x.sent / x.wallMs) * 1000).toFixed(0)}/s)`,
    `  answers by status: ${Object.entries(x.statuses).map(([s, n]) => `${s}: ${n}`).join(', ')}; accepted ${x.accepted}`,
    `  accepted by method: ${Object.entries(x.acceptedBy).sort(([a], [b]) => a.localeCompare(b)).map(([m, n]) => `${m.slice(1).replace(/^(NetworkDriver|IpamDriver)\./, '')} ${n}`).join(', ')}`,
    `  latency p50 ${percentile(x.latencyMs, 50).toFixed(1)} ms  p99 ${percentile(x.latencyMs, 99).toFixed(1)} ms  max ${percentile(x.latencyMs, 100).toFixed(0)} ms`,
    `  made and undone: ${x.state.networks.size} networks, ${x.state.endpoints.size} endpoints, ${x.state.addresses.size} addresses`,
    `  crashes/hangs ${x.crashesOrHangs.length}; answer violations ${x.violations.length}; undo failures ${x.cleanupProblems.length}; daemon ERROR lines ${r.errorLines.length}; exit on SIGTERM ${r.exitCode}`,
    `  left at the end: ${Object.entries(r.left).map(([k, v]) => `${k} ${(v as string[]).length}`).join(', ')}`,
  ];
  const show: [string, string[]][] = [
    ['crash/hang', x.crashesOrHangs.map((v) => `${v.problem} <- ${v.request}`)],
    ['violation', x.violations.map((v) => `${v.problem} <- ${v.request}`)],
    ['undo', x.cleanupProblems],
    ['daemon', r.errorLines],
    ...Object.entries(r.left).map(([k, v]): [string, string[]] => [`left ${k}`, v as string[]]),
  ];
  for (const [what, list] of show) for (const item of list.slice(0, 10)) lines.push(`  ${what}: ${item.slice(0, 600)}`);
  return lines;
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: {
    requests: { type: 'string', default: '10000' },
    single: { type: 'string' },
    seed: { type: 'string' },
    concurrency: { type: 'string', default: '1' },
  } });
  const requests = count('requests', values.requests, 1);
  const single = values.single === undefined ? Math.ceil(requests / 5) : count('single', values.single, 0);
  const seed = values.seed === undefined ? randomInt(2 ** 31) : count('seed', values.seed, 0);
  const concurrency = count('concurrency', values.concurrency, 1);
  process.stdout.write(`fuzz: seed ${seed} (rerun with --seed ${seed}${concurrency === 1 ? '' : ' --concurrency 1 for the same sequence'})\n`);
  const progress = (l: string): boolean => process.stderr.write(`  ${l}\n`);
  let ok = true;
  const split = await fuzzHarnessPlugin({ requests, seed, single: false, concurrency, progress });
  process.stdout.write(`${fuzzReport('two sockets', seed, split).join('\n')}\n`);
  ok &&= fuzzPassed(split);
  if (single > 0) {
    const one = await fuzzHarnessPlugin({ requests: single, seed: seed + 1, single: true, concurrency, progress });
    process.stdout.write(`${fuzzReport('one socket (managed plugin mode)', seed + 1, one).join('\n')}\n`);
    ok &&= fuzzPassed(one);
  }
  process.stdout.write(ok ? 'PASS: no crash, no hang, right error keys, nothing leaked\n' : 'FAIL\n');
  if (!ok) process.exitCode = 1;
}

if (require.main === module) {
  main().then(
    () => process.exit(process.exitCode ?? 0),
    (err: unknown) => {
      process.stderr.write(`fuzz: ${err instanceof Error ? err.message : String(err)}\n`);
      process.exit(1);
    },
  );
}
