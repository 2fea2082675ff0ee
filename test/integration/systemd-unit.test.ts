// The systemd unit in scripts/: `systemd-analyze verify` (offline: it reads the unit file and
// checks its syntax, the keys, the executables named and the units it references; no systemd as
// PID 1 is needed) accepts it without a warning, and the unit runs the built daemon directly.
import test from 'ava';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

const UNIT = resolve(__dirname, '../../../scripts/calico-libnetwork.service');
const ANALYZE = ['/usr/bin/systemd-analyze', '/bin/systemd-analyze'].find((p) => existsSync(p));

function verify(path: string): Promise<{ code: number; output: string }> {
  return new Promise((res) => {
    if (ANALYZE === undefined) throw new Error('no systemd-analyze');
    execFile(ANALYZE, ['verify', '--man=no', path], { timeout: 30_000 }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof err.code === 'number' ? err.code : 1;
      res({ code, output: `${stdout}${stderr}` });
    });
  });
}

const withTool = ANALYZE === undefined ? test.skip : test;
if (ANALYZE === undefined) console.log('systemd-analyze not found (Debian package systemd): skipping the unit verification');

withTool('systemd-analyze verify accepts scripts/calico-libnetwork.service without a warning', async (t) => {
  const { code, output } = await verify(UNIT);
  t.is(output.trim(), '');
  t.is(code, 0);
});

withTool('the verification catches a broken unit (so a pass means something)', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'calico-unit-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const broken = join(dir, 'calico-libnetwork.service');
  const text = await readFile(UNIT, 'utf8');
  await writeFile(broken, text.replace('ExecStart=/usr/bin/node', 'ExecStart=/nonexistent/node').replace('KillSignal=', 'KilSignal='));
  const { code, output } = await verify(broken);
  t.not(code, 0);
  t.regex(output, /nonexistent\/node is not executable/);
  t.regex(output, /Unknown key 'KilSignal'/);
});

test('the unit runs the built daemon directly, before Docker, with the settings file and SIGTERM', async (t) => {
  const text = await readFile(UNIT, 'utf8');
  const lines = text.split('\n').filter((l) => !l.startsWith('#'));
  const has = (l: string): boolean => lines.includes(l);
  t.true(lines.some((l) => /^ExecStart=\/usr\/bin\/node \S+\/dist\/bin\/calico-libnetwork\.js$/.test(l)), 'ExecStart runs dist/bin/calico-libnetwork.js with node');
  t.false(/npm/.test(lines.join('\n')), 'not through npm');
  t.true(has('Before=docker.service'));
  t.true(has('EnvironmentFile=-/etc/calico/calico-libnetwork.env'));
  t.true(has('KillSignal=SIGTERM'));
  t.true(has('Restart=on-failure'));
  t.false(lines.some((l) => l.startsWith('ProtectKernelTunables=yes')), 'the daemon writes sysctls under /proc/sys');
  t.true(/^CapabilityBoundingSet=.*CAP_NET_ADMIN/m.test(text));
});
