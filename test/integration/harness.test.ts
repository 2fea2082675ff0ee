// Smoke test for the e2e harness: an isolated dockerd starts, takes the busybox test image without a
// registry, runs a container with no network, and stop() leaves no directory, mount or process;
// what a killed test process leaves is reaped.

import test from 'ava';
import Docker from 'dockerode';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { run } from '../../dataplane/exec.js';
import { mountsUnder, processesUsing, reapOrphanDockerds, startDockerd, type TestDockerd } from '../harness/dockerd.js';
import { runAndKill } from '../harness/crash-worker.js';
import { reapOrphanPlugins } from '../harness/plugin.js';
import { importTestImage } from '../harness/image.js';

test('isolated dockerd: import image, run `true` with --net none, stop cleanly', async (t) => {
  let d: TestDockerd | undefined;
  t.teardown(async () => {
    await d?.stop();
  });
  d = await startDockerd();
  const docker = new Docker({ socketPath: d.socketPath });

  const info = await docker.info();
  t.is(info.Driver, 'vfs');
  t.is(info.DockerRootDir, d.dataRoot);

  const ref = await importTestImage(d.socketPath, `calico-test/busybox:${process.pid}`);
  const image = await docker.getImage(ref).inspect();
  t.deepEqual(image.Config.Cmd, ['/bin/sh']);

  const container = await docker.createContainer({
    Image: ref,
    Cmd: ['sh', '-c', 'ping -c1 -W1 127.0.0.1 >/dev/null && true'],
    HostConfig: { NetworkMode: 'none' },
  });
  await container.start();
  const result = (await container.wait()) as { StatusCode: number };
  t.is(result.StatusCode, 0);
  await container.remove();
  t.deepEqual(await docker.listContainers({ all: true }), []);

  // A running container too: stop() has to take it down.
  const sleeper = await docker.createContainer({ Image: ref, Cmd: ['sleep', '600'], HostConfig: { NetworkMode: 'none' } });
  await sleeper.start();

  const { baseDir } = d;
  await d.stop();
  await d.stop(); // idempotent
  t.false(existsSync(baseDir), 'temp directory removed');
  t.deepEqual(mountsUnder(baseDir), [], 'no mounts left');
  t.deepEqual(processesUsing(baseDir), [], 'no dockerd/containerd/shim left');
});

test('what a killed test process left behind (dockerd, containerd, a running container, mounts; the plugin, its chains and data) is reaped', async (t) => {
  t.timeout(120_000);
  // A process that starts a dockerd with a running container and a plugin, then is SIGKILLed: no
  // stop(), no exit hook (as when ava's timeout kills a test).
  let kill = (): void => undefined;
  let started = false;
  t.teardown(async () => {
    kill();
    if (started) await Promise.all([reapOrphanDockerds(), reapOrphanPlugins()]);
  });
  const { match } = await runAndKill(join(__dirname, '..', 'harness', 'dockerd-crash-worker.js'), /^(\/tmp\/cd-\w{6}) (\S+) (t[0-9a-f]{6})\n/, 90_000, (k) => {
    kill = k;
    started = true;
  });
  const [, dir = '', dataDir = '', chainPrefix = ''] = match;
  const chains = async (): Promise<number> => (await run('iptables-save', [], 'list chains')).stdout.split('\n').filter((l) => l.startsWith(`:${chainPrefix}-`)).length;
  const sockets = (): number => [`calico-t${chainPrefix.slice(1)}`, `calico-ipam-t${chainPrefix.slice(1)}`].filter((n) => existsSync(`/run/docker/plugins/${n}.sock`)).length;
  const left = async (d: string) => ({ dir: existsSync(d), processes: processesUsing(d).length, mounts: mountsUnder(d).length, dataDir: existsSync(dataDir), chains: await chains(), sockets: sockets() });
  const before = await left(dir);
  t.log(`left by the killed run: ${JSON.stringify(before)}`);
  t.true(before.processes > 0, 'dockerd, containerd and the container outlive the killed process');
  // (Another test's startDockerd() or startPlugin() may reap it first: only the end state is asserted.)
  await reapOrphanDockerds();
  await reapOrphanPlugins();
  t.deepEqual(await left(dir), { dir: false, processes: 0, mounts: 0, dataDir: false, chains: 0, sockets: 0 });
});
