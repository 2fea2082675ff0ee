// Smoke test for the e2e harness: an isolated dockerd starts, takes the busybox test image without a
// registry, runs a container with no network, and stop() leaves no directory, mount or process.

import test from 'ava';
import Docker from 'dockerode';
import { existsSync } from 'node:fs';
import { mountsUnder, processesUsing, startDockerd, type TestDockerd } from '../harness/dockerd.js';
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
