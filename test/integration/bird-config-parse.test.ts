// BIRD itself accepts every shape of configuration we render (`bird -p`: parse only, nothing
// started), so a rendering mistake shows here rather than as a refused reload on a host.
import test from 'ava';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { type BirdInput, renderBirdConfig } from '../../bgp/bird-config';

const run = promisify(execFile);
const base: BirdInput = {
  hostAddress: '198.18.1.11/24',
  asNumber: 64512,
  exports: ['198.19.0.0/26', '198.19.3.7/32'],
  peers: [],
  timers: { keepaliveSeconds: 2, holdSeconds: 6, connectRetrySeconds: 1 },
};
const cases: [string, BirdInput][] = [
  ['no peers, nothing to export', { ...base, exports: [] }],
  ['mesh on one subnet and across', { ...base, peers: [{ kind: 'mesh', address: '198.18.1.12', asNumber: 64512 }, { kind: 'mesh', address: '198.18.2.11', asNumber: 64512 }] }],
  ['eBGP global and node peers, AS override', { ...base, asNumber: 64600, peers: [{ kind: 'global', address: '198.18.1.1', asNumber: 65000 }, { kind: 'node', address: '198.18.1.2', asNumber: 4_200_000_000 }] }],
  ['route reflector with a client and another reflector', { ...base, routeReflectorClusterId: '1.0.0.1', peers: [{ kind: 'rr', address: '198.18.1.12', asNumber: 64512, rrClient: true }, { kind: 'rr', address: '198.18.1.13', asNumber: 64512 }] }],
];

for (const [what, input] of cases) {
  test(`bird -p accepts: ${what}`, async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'bgp-parse-'));
    t.teardown(() => rmSync(dir, { recursive: true, force: true }));
    const file = join(dir, 'bird.conf');
    writeFileSync(file, renderBirdConfig({ ...input, logFile: join(dir, 'bird.log') }));
    const r = await run('bird', ['-p', '-c', file]).then(() => 'ok', (err: Error & { stderr?: string }) => err.stderr ?? err.message);
    t.is(r, 'ok');
  });
}
