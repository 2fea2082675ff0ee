// Child process for the crash-safety test: writes to an EmbeddedStore as fast as it can and prints
// a line for every acknowledged write, until the test SIGKILLs it. Usage: <dir> <tag>.
// Lines: "put <key> <value>", "del <key>", "counter <n>".
import { EmbeddedStore } from '../../datastore/embedded-store';

const WRITERS = 6;
/** Small, so compaction also runs (and gets killed) while writes are in flight. */
const COMPACT_SLACK_BYTES = 32 * 1024;

async function main(): Promise<void> {
  const [dir, tag] = process.argv.slice(2);
  if (dir === undefined || tag === undefined) throw new Error('usage: embedded-store-writer <dir> <tag>');
  const store = await EmbeddedStore.open(dir, { compactSlackBytes: COMPACT_SLACK_BYTES });
  const say = (line: string): void => {
    process.stdout.write(line + '\n');
  };
  say('ready');
  const creators = Array.from({ length: WRITERS }, async (_, w) => {
    for (let i = 0; ; i++) {
      const key = `/w/${tag}/${w}/${i}`;
      if ((await store.create(key, `v${i}`)) !== undefined) say(`put ${key} v${i}`);
    }
  });
  const deleter = (async () => {
    for (let i = 0; ; i++) {
      const key = `/d/${tag}/${i}`;
      await store.create(key, 'doomed');
      if (await store.delete(key)) say(`del ${key}`);
    }
  })();
  const counter = (async () => {
    for (;;) {
      const cur = await store.get('/counter');
      const n = cur === undefined ? 1 : Number(cur.value) + 1;
      const ok = cur === undefined ? await store.create('/counter', String(n)) : await store.update('/counter', String(n), cur.revision);
      if (ok !== undefined) say(`counter ${n}`);
    }
  })();
  await Promise.all([...creators, deleter, counter]);
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? err.stack : String(err)}\n`);
  process.exit(1);
});
