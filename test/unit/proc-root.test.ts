// Host-namespace sysctls go through the configured proc root (CALICO_PROC_ROOT): a managed plugin
// sees the host's /proc at /host/proc because its own /proc/sys is read-only. A fake tree stands in
// for it here, so nothing of the real host is read or written.
import test from 'ava';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ensureHostForwarding } from '../../dataplane/veth';

test('ensureHostForwarding reads and writes <procRoot>/sys, nothing else', async (t) => {
  const root = await mkdtemp(join(tmpdir(), 'calico-procroot-'));
  t.teardown(() => rm(root, { recursive: true, force: true }));
  await mkdir(join(root, 'sys/net/ipv4'), { recursive: true });
  await mkdir(join(root, 'sys/net/ipv6/conf/all'), { recursive: true });
  await writeFile(join(root, 'sys/net/ipv4/ip_forward'), '0\n');
  await writeFile(join(root, 'sys/net/ipv6/conf/all/forwarding'), '1\n');
  t.deepEqual(await ensureHostForwarding({ ipv6: true }, { procRoot: root }), ['net.ipv4.ip_forward']);
  t.is(await readFile(join(root, 'sys/net/ipv4/ip_forward'), 'utf8'), '1');
  t.is(await readFile(join(root, 'sys/net/ipv6/conf/all/forwarding'), 'utf8'), '1\n', 'already on: not written');
  t.deepEqual(await ensureHostForwarding({ ipv6: true }, { procRoot: `${root}/` }), [], 'idempotent; a trailing slash is fine');
});

test('a relative proc root is refused', async (t) => {
  await t.throwsAsync(ensureHostForwarding({ ipv6: false }, { procRoot: 'proc' }), { message: /proc root must be an absolute path/ });
});
