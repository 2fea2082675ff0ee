// What a test file's tests share (a dockerd, a plugin, an etcd), set up once in test.before and
// torn down in test.after.always, in reverse order, also when the setup failed halfway: each piece
// registers its teardown as soon as it exists.
import type { TestFn } from 'ava';
import { randomBytes } from 'node:crypto';
import Docker from 'dockerode';
import { startDockerd, type Dockerd } from './dockerd';
import { importTestImage } from './image';

export type OnTeardown = (teardown: () => Promise<unknown>) => void;

/** Registers the file's setup; the returned accessor gives its result inside tests (and throws
 * "setup failed" when it did not finish). */
export function fileFixture<T>(test: TestFn, setup: (onTeardown: OnTeardown) => Promise<T>): () => T {
  let ctx: T | undefined;
  const teardowns: (() => Promise<unknown>)[] = [];
  test.before(async () => {
    ctx = await setup((td) => teardowns.push(td));
  });
  test.after.always(async () => {
    for (const td of teardowns.reverse()) await td().catch((err: unknown) => console.error('teardown:', err));
  });
  return () => {
    if (ctx === undefined) throw new Error('setup failed');
    return ctx;
  };
}

export interface DockerWithImage {
  readonly dockerd: Dockerd;
  readonly docker: Docker;
  /** The test image (busybox), imported under a name of its own. */
  readonly image: string;
}

/** An isolated dockerd with the test image imported. */
export async function dockerWithImage(onTeardown: OnTeardown, imagePrefix = 'calico-test'): Promise<DockerWithImage> {
  const dockerd = await startDockerd();
  onTeardown(() => dockerd.stop());
  const image = `${imagePrefix}-${randomBytes(3).toString('hex')}:latest`;
  await importTestImage(dockerd.socketPath, image);
  return { dockerd, docker: new Docker({ socketPath: dockerd.socketPath }), image };
}
