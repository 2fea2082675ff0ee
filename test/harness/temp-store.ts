// An embedded datastore in a directory of its own, closed and removed when the test ends.
import type { ExecutionContext } from 'ava';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EmbeddedStore } from '../../datastore/embedded-store';

export async function openTempStore(t: ExecutionContext, name: string): Promise<EmbeddedStore> {
  const dir = await mkdtemp(join(tmpdir(), `calico-${name}-`));
  const store = await EmbeddedStore.open(dir);
  t.teardown(async () => {
    await store.close();
    await rm(dir, { recursive: true, force: true });
  });
  return store;
}
