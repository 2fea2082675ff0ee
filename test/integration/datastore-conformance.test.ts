// One behavioural contract for every Datastore backend: the embedded store, the embedded store
// reached through the store socket, and a real etcd. Backend-specific guarantees (crash safety,
// directory lock, log compaction, fail-fast connects) follow the shared suite.
import test, { type ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import {
  appendFileSync,
  existsSync,
  linkSync,
  mkdtempSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Etcd3 } from 'etcd3';
import { DatastoreUnavailableError, InvalidRequestError } from '../../lib/errors';
import { MAX_TXN_OPS, compareRevisions, type Datastore, type TxnOp, type WatchEvent, type WatchOptions } from '../../datastore/datastore';
import { EmbeddedStore, type EmbeddedStoreOptions } from '../../datastore/embedded-store';
import { EtcdStore } from '../../datastore/etcd-store';
import { openDatastore, storeSocketPath } from '../../datastore/open-datastore';
import { RemoteStore, serveStore } from '../../datastore/store-socket';
import { StoreLockedError, WatchCompactedError } from '../../datastore/store-errors';
import { startEtcd, type EtcdHandle } from '../harness/etcd';

interface Fixture {
  readonly store: Datastore;
  /** Unique to the test; every key the test writes starts with it. */
  readonly prefix: string;
  /** Makes revisions up to now unavailable to watch replay. */
  forgetHistory(): Promise<void>;
}

type Factory = (t: ExecutionContext) => Promise<Fixture>;

const WATCH_HISTORY = 20;
const EVENT_TIMEOUT_MS = 5_000;

// ---------------------------------------------------------------------------------------------
// Backends

function tempDir(t: ExecutionContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'calico-test-store-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

async function openEmbedded(t: ExecutionContext, dir: string, options: EmbeddedStoreOptions = {}): Promise<EmbeddedStore> {
  const store = await EmbeddedStore.open(dir, { watchHistory: WATCH_HISTORY, ...options });
  t.teardown(() => store.close());
  return store;
}

/** Pushes the embedded store's bounded history past everything written so far. */
async function overflowHistory(store: Datastore, prefix: string): Promise<void> {
  for (let i = 0; i < WATCH_HISTORY * 2 + 1; i++) await store.create(`${prefix}filler/${i}`, 'x');
}

const embedded: Factory = async (t) => {
  const store = await openEmbedded(t, tempDir(t));
  const prefix = '/conformance/';
  return { store, prefix, forgetHistory: () => overflowHistory(store, prefix) };
};

const remote: Factory = async (t) => {
  const dir = tempDir(t);
  const backing = await openEmbedded(t, dir);
  const server = await serveStore(backing, storeSocketPath(dir));
  t.teardown(() => server.close());
  const store = new RemoteStore(storeSocketPath(dir));
  t.teardown(() => store.close());
  const prefix = '/conformance/';
  return { store, prefix, forgetHistory: () => overflowHistory(backing, prefix) };
};

let etcd: EtcdHandle | undefined;
let etcdAdmin: Etcd3 | undefined;

test.before(async () => {
  etcd = await startEtcd();
  etcdAdmin = new Etcd3({ hosts: etcd.endpoints });
});

test.after.always(async () => {
  etcdAdmin?.close();
  await etcd?.stop();
});

function etcdHandles(): { handle: EtcdHandle; admin: Etcd3 } {
  if (etcd === undefined || etcdAdmin === undefined) throw new Error('etcd did not start');
  return { handle: etcd, admin: etcdAdmin };
}

const etcdBackend: Factory = async (t) => {
  const { handle, admin } = etcdHandles();
  const prefix = `/conformance/${randomUUID()}/`;
  t.teardown(async () => {
    await admin.delete().prefix(prefix);
  });
  const store = await EtcdStore.open({ endpoints: handle.endpoints });
  t.teardown(() => store.close());
  return {
    store,
    prefix,
    forgetHistory: async () => {
      // etcd keeps the compaction revision itself readable, so compact one write further.
      const filler = await store.create(`${prefix}filler`, 'x');
      if (filler === undefined) throw new Error('filler write failed');
      await admin.kv.compact({ revision: filler.revision, physical: true });
    },
  };
};

// ---------------------------------------------------------------------------------------------
// Watch helper

interface Recorder {
  readonly events: WatchEvent[];
  readonly errors: Error[];
  waitFor(count: number): Promise<WatchEvent[]>;
  waitForError(): Promise<Error>;
  close(): Promise<void>;
}

async function record(t: ExecutionContext, store: Datastore, prefix: string, options?: WatchOptions): Promise<Recorder> {
  const events: WatchEvent[] = [];
  const errors: Error[] = [];
  let wake = (): void => undefined;
  const watch = await store.watch(
    prefix,
    {
      onEvent: (e) => {
        events.push(e);
        wake();
      },
      onError: (err) => {
        errors.push(err);
        wake();
      },
    },
    options,
  );
  t.teardown(() => watch.close());
  const until = async (done: () => boolean, what: string): Promise<void> => {
    const deadline = Date.now() + EVENT_TIMEOUT_MS;
    while (!done()) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${what}; have ${JSON.stringify(events)} ${errors.join(', ')}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
  };
  return {
    events,
    errors,
    waitFor: async (count) => {
      await until(() => events.length >= count || errors.length > 0, `${count} events`);
      if (errors.length > 0) throw errors[0];
      return events.slice(0, count);
    },
    waitForError: async () => {
      await until(() => errors.length > 0, 'a watch error');
      const err = errors[0];
      if (err === undefined) throw new Error('unreachable');
      return err;
    },
    close: () => watch.close(),
  };
}

const settle = (ms = 200): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

// ---------------------------------------------------------------------------------------------
// The shared contract

function conformance(name: string, setup: Factory): void {
  test(`${name}: get returns undefined for a missing key and the last write otherwise`, async (t) => {
    const { store, prefix } = await setup(t);
    t.is(await store.get(`${prefix}missing`), undefined);
    const created = await store.create(`${prefix}k`, '{"a":1}');
    t.deepEqual(await store.get(`${prefix}k`), created);
    t.is(created?.value, '{"a":1}');
  });

  test(`${name}: list returns only keys under the prefix, sorted by key`, async (t) => {
    const { store, prefix } = await setup(t);
    for (const k of ['b', 'a/2', 'a/10', 'a/1', 'ab', 'a', 'a/ü']) await store.create(prefix + k, k);
    await store.create(`${prefix.slice(0, -1)}-sibling`, 'outside');
    t.teardown(() => store.delete(`${prefix.slice(0, -1)}-sibling`).then(() => undefined));

    const under = await store.list(`${prefix}a/`);
    t.deepEqual(under.items.map((i) => i.key.slice(prefix.length)), ['a/1', 'a/10', 'a/2', 'a/ü']);
    const all = await store.list(prefix);
    t.deepEqual(all.items.map((i) => i.value), ['a', 'a/1', 'a/10', 'a/2', 'a/ü', 'ab', 'b']);
    for (const item of all.items) t.true(compareRevisions(item.revision, all.revision) <= 0);

    const empty = await store.list(`${prefix}nothing/`);
    t.deepEqual(empty.items, []);
    t.regex(empty.revision, /^\d+$/);
  });

  test(`${name}: create does not overwrite an existing key`, async (t) => {
    const { store, prefix } = await setup(t);
    const first = await store.create(`${prefix}k`, 'one');
    t.truthy(first);
    t.is(await store.create(`${prefix}k`, 'two'), undefined);
    t.deepEqual(await store.get(`${prefix}k`), first);
  });

  test(`${name}: update is a compare-and-swap on the key's revision`, async (t) => {
    const { store, prefix } = await setup(t);
    const key = `${prefix}k`;
    const v1 = await store.create(key, 'one');
    if (v1 === undefined) return t.fail('create failed');
    const v2 = await store.update(key, 'two', v1.revision);
    if (v2 === undefined) return t.fail('update with the current revision failed');
    t.is(v2.value, 'two');
    t.is(compareRevisions(v2.revision, v1.revision), 1);
    t.is(await store.update(key, 'stale', v1.revision), undefined, 'a stale revision must conflict');
    t.deepEqual(await store.get(key), v2);
    t.is(await store.update(`${prefix}absent`, 'x', v2.revision), undefined, 'update never creates');
    t.is(await store.update(`${prefix}absent`, 'x', '0'), undefined, "revision '0' never creates");
    t.is(await store.get(`${prefix}absent`), undefined);
    t.true(await store.delete(key));
    t.is(await store.update(key, 'zombie', v2.revision), undefined, 'update of a deleted key conflicts');
    return undefined;
  });

  test(`${name}: delete with and without a revision`, async (t) => {
    const { store, prefix } = await setup(t);
    const a = await store.create(`${prefix}a`, 'x');
    if (a === undefined) return t.fail('create failed');
    t.true(await store.delete(`${prefix}a`));
    t.false(await store.delete(`${prefix}a`), 'deleting an absent key reports false');

    const b1 = await store.create(`${prefix}b`, 'x');
    if (b1 === undefined) return t.fail('create failed');
    const b2 = await store.update(`${prefix}b`, 'y', b1.revision);
    if (b2 === undefined) return t.fail('update failed');
    t.false(await store.delete(`${prefix}b`, b1.revision), 'a stale revision must not delete');
    t.deepEqual(await store.get(`${prefix}b`), b2);
    t.true(await store.delete(`${prefix}b`, b2.revision));
    t.is(await store.get(`${prefix}b`), undefined);
    t.false(await store.delete(`${prefix}b`, b2.revision));
    return undefined;
  });

  test(`${name}: malformed revisions are rejected`, async (t) => {
    const { store, prefix } = await setup(t);
    await t.throwsAsync(store.update(`${prefix}k`, 'x', 'abc'), { instanceOf: InvalidRequestError });
    await t.throwsAsync(store.delete(`${prefix}k`, '-1'), { instanceOf: InvalidRequestError });
  });

  test(`${name}: every write gets a higher revision, including deletes`, async (t) => {
    const { store, prefix } = await setup(t);
    let last = (await store.list(prefix)).revision;
    const advanced = async (): Promise<void> => {
      const now = (await store.list(prefix)).revision;
      t.is(compareRevisions(now, last), 1);
      last = now;
    };
    for (let i = 0; i < 5; i++) {
      const kv = await store.create(`${prefix}k${i}`, String(i));
      if (kv === undefined) return t.fail('create failed');
      t.is(compareRevisions(kv.revision, last), 1);
      await advanced();
      // Equal on a private store; other tests write to the shared etcd meanwhile.
      t.true(compareRevisions(kv.revision, last) <= 0, "a key's revision is the store revision of its write");
    }
    const cur = await store.get(`${prefix}k0`);
    if (cur === undefined) return t.fail('get failed');
    await store.update(`${prefix}k0`, 'again', cur.revision);
    await advanced();
    await store.delete(`${prefix}k1`);
    await advanced();
    return undefined;
  });

  test(`${name}: watch delivers puts and deletes under the prefix, in revision order`, async (t) => {
    const { store, prefix } = await setup(t);
    const rec = await record(t, store, `${prefix}w/`);
    const a = await store.create(`${prefix}w/a`, '1');
    await store.create(`${prefix}other`, 'not watched');
    if (a === undefined) return t.fail('create failed');
    const a2 = await store.update(`${prefix}w/a`, '2', a.revision);
    await store.delete(`${prefix}w/a`);
    const events = await rec.waitFor(3);
    t.deepEqual(
      events.map((e) => [e.type, e.key.slice(prefix.length), e.type === 'put' ? e.value : null]),
      [['put', 'w/a', '1'], ['put', 'w/a', '2'], ['delete', 'w/a', null]],
    );
    t.is(events[0]?.revision, a.revision);
    t.is(events[1]?.revision, a2?.revision);
    for (let i = 1; i < events.length; i++) {
      t.is(compareRevisions(events[i]?.revision ?? '0', events[i - 1]?.revision ?? '0'), 1);
    }
    await settle();
    t.is(rec.events.length, 3, 'no event for keys outside the prefix');
    return undefined;
  });

  test(`${name}: list then watch from its revision misses nothing`, async (t) => {
    const { store, prefix } = await setup(t);
    await store.create(`${prefix}before`, '0');
    const listing = await store.list(prefix);
    // Changes land between the listing and the watch, as they do while a consumer processes a list.
    await store.create(`${prefix}between/1`, '1');
    await store.delete(`${prefix}before`);
    const rec = await record(t, store, prefix, { afterRevision: listing.revision });
    await store.create(`${prefix}after`, '2');
    const events = await rec.waitFor(3);
    t.deepEqual(events.map((e) => `${e.type} ${e.key.slice(prefix.length)}`), ['put between/1', 'delete before', 'put after']);
    await settle();
    t.is(rec.events.length, 3, 'nothing at or before the listed revision is replayed');
    t.deepEqual(rec.errors, []);
  });

  test(`${name}: a closed watch delivers nothing more`, async (t) => {
    const { store, prefix } = await setup(t);
    const rec = await record(t, store, prefix);
    await store.create(`${prefix}1`, 'x');
    await rec.waitFor(1);
    await rec.close();
    await rec.close();
    await store.create(`${prefix}2`, 'x');
    await settle();
    t.is(rec.events.length, 1);
    t.deepEqual(rec.errors, []);
  });

  test(`${name}: concurrent compare-and-swap loops lose no update`, async (t) => {
    const { store, prefix } = await setup(t);
    const key = `${prefix}counter`;
    const workers = 20;
    const increments = 10;
    await store.create(key, '0');
    let conflicts = 0;
    await Promise.all(
      Array.from({ length: workers }, async () => {
        for (let done = 0; done < increments; ) {
          const cur = await store.get(key);
          if (cur === undefined) throw new Error('counter vanished');
          if ((await store.update(key, String(Number(cur.value) + 1), cur.revision)) !== undefined) done++;
          else conflicts++;
        }
      }),
    );
    t.is((await store.get(key))?.value, String(workers * increments));
    t.log(`${conflicts} conflicts`);
  });

  test(`${name}: commit writes every operation at one revision, or nothing`, async (t) => {
    const { store, prefix } = await setup(t);
    const a = await store.create(`${prefix}a`, 'a1');
    const b = await store.create(`${prefix}b`, 'b1');
    const c = await store.create(`${prefix}c`, 'c1');
    if (a === undefined || b === undefined || c === undefined) return t.fail('create failed');
    const rec = await record(t, store, `${prefix}`);
    const revision = await store.commit([
      { type: 'create', key: `${prefix}new`, value: 'n' },
      { type: 'update', key: `${prefix}a`, value: 'a2', revision: a.revision },
      { type: 'delete', key: `${prefix}b`, revision: b.revision },
      { type: 'delete', key: `${prefix}never-there` },
      { type: 'check', key: `${prefix}c`, revision: c.revision },
    ]);
    if (revision === undefined) return t.fail('commit with every condition true failed');
    t.is(compareRevisions(revision, c.revision), 1);
    t.deepEqual(await store.get(`${prefix}new`), { key: `${prefix}new`, value: 'n', revision });
    t.deepEqual(await store.get(`${prefix}a`), { key: `${prefix}a`, value: 'a2', revision });
    t.is(await store.get(`${prefix}b`), undefined);
    t.deepEqual(await store.get(`${prefix}c`), c, 'check writes nothing');
    const events = await rec.waitFor(3);
    t.deepEqual(events.map((e) => [e.type, e.key.slice(prefix.length), e.revision]).sort(), [
      ['delete', 'b', revision],
      ['put', 'a', revision],
      ['put', 'new', revision],
    ]);

    // Each failing condition alone leaves every key as it was.
    const failing: Array<[string, TxnOp]> = [
      ['create of an existing key', { type: 'create', key: `${prefix}new`, value: 'x' }],
      ['update at a stale revision', { type: 'update', key: `${prefix}a`, value: 'x', revision: a.revision }],
      ['update of an absent key', { type: 'update', key: `${prefix}b`, value: 'x', revision }],
      ['delete at a stale revision', { type: 'delete', key: `${prefix}a`, revision: a.revision }],
      ['check at a stale revision', { type: 'check', key: `${prefix}a`, revision: a.revision }],
      ['check of an absent key', { type: 'check', key: `${prefix}b`, revision }],
    ];
    const before = await store.list(prefix);
    for (const [why, op] of failing) {
      const r = await store.commit([{ type: 'create', key: `${prefix}side-effect`, value: 'x' }, { type: 'delete', key: `${prefix}c` }, op]);
      t.is(r, undefined, why);
    }
    t.deepEqual((await store.list(prefix)).items, before.items, 'failed commits wrote nothing');
    return undefined;
  });

  test(`${name}: commit refuses malformed operation lists`, async (t) => {
    const { store, prefix } = await setup(t);
    await t.throwsAsync(store.commit([]), { instanceOf: InvalidRequestError });
    await t.throwsAsync(
      store.commit([{ type: 'create', key: `${prefix}k`, value: 'x' }, { type: 'delete', key: `${prefix}k` }]),
      { instanceOf: InvalidRequestError, message: /twice/ },
    );
    await t.throwsAsync(store.commit([{ type: 'check', key: `${prefix}k`, revision: 'x' }]), { instanceOf: InvalidRequestError });
    const tooMany = Array.from({ length: MAX_TXN_OPS + 1 }, (_, i): TxnOp => ({ type: 'create', key: `${prefix}k${i}`, value: 'x' }));
    await t.throwsAsync(store.commit(tooMany), { instanceOf: InvalidRequestError });
    t.deepEqual((await store.list(prefix)).items, []);
  });

  test(`${name}: concurrent commits on a shared key: exactly one wins`, async (t) => {
    const { store, prefix } = await setup(t);
    const results = await Promise.all(
      Array.from({ length: 8 }, (_, i) =>
        store.commit([
          { type: 'create', key: `${prefix}shared`, value: String(i) },
          { type: 'create', key: `${prefix}own/${i}`, value: String(i) },
        ]),
      ),
    );
    const winners = results.flatMap((r, i) => (r === undefined ? [] : [i]));
    t.is(winners.length, 1);
    t.is((await store.get(`${prefix}shared`))?.value, String(winners[0]));
    t.deepEqual((await store.list(`${prefix}own/`)).items.map((kv) => kv.value), [String(winners[0])]);
  });

  // Serial: compacting a shared etcd must not pull history from under concurrent replay tests,
  // and AVA runs serial tests before the concurrent ones.
  test.serial(`${name}: watching from forgotten history reports WatchCompactedError`, async (t) => {
    const { store, prefix, forgetHistory } = await setup(t);
    const old = await store.create(`${prefix}old`, 'x');
    if (old === undefined) return t.fail('create failed');
    await store.update(`${prefix}old`, 'y', old.revision);
    await forgetHistory();
    const rec = await record(t, store, prefix, { afterRevision: old.revision });
    const err = await rec.waitForError();
    t.true(err instanceof WatchCompactedError, `got ${err.name}: ${err.message}`);
    // The documented recovery works: resync from list() and watch from its revision.
    const listing = await store.list(prefix);
    const again = await record(t, store, prefix, { afterRevision: listing.revision });
    await store.create(`${prefix}new`, 'z');
    t.is((await again.waitFor(1))[0]?.key, `${prefix}new`);
    return undefined;
  });
}

conformance('embedded', embedded);
conformance('remote', remote);
conformance('etcd', etcdBackend);

// ---------------------------------------------------------------------------------------------
// Embedded store: durability, crash safety, locking, compaction

test('embedded: data and revisions survive close and reopen', async (t) => {
  const dir = tempDir(t);
  const first = await EmbeddedStore.open(dir);
  await first.create('/a', '1');
  const b = await first.create('/b', '2');
  await first.delete('/a');
  const before = await first.list('');
  await first.close();

  const second = await openEmbedded(t, dir);
  t.deepEqual(await second.list(''), before);
  t.deepEqual(await second.get('/b'), b);
  const c = await second.create('/c', '3');
  t.is(compareRevisions(c?.revision ?? '0', before.revision), 1, 'revisions continue after reopen');
});

test('embedded: a torn final log line is ignored and cut off', async (t) => {
  const dir = tempDir(t);
  const first = await EmbeddedStore.open(dir);
  await first.create('/kept', 'yes');
  const before = await first.list('');
  await first.close();
  appendFileSync(join(dir, 'store.log'), '{"t":"put","k":"/torn","v":"never acknow');

  const second = await EmbeddedStore.open(dir);
  t.deepEqual(await second.list(''), before);
  await second.create('/after', 'ok');
  await second.close();
  t.false(readFileSync(join(dir, 'store.log'), 'utf8').includes('never acknow'));

  const third = await openEmbedded(t, dir);
  t.deepEqual((await third.list('')).items.map((i) => i.key), ['/after', '/kept']);
});

test('embedded: a commit is one log record: it survives reopen whole, and a torn one is dropped whole', async (t) => {
  const dir = tempDir(t);
  const first = await EmbeddedStore.open(dir);
  const a = await first.create('/a', '1');
  if (a === undefined) return t.fail('create failed');
  const revision = await first.commit([
    { type: 'create', key: '/b', value: '2' },
    { type: 'update', key: '/a', value: '3', revision: a.revision },
  ]);
  const before = await first.list('');
  await first.close();
  const log = readFileSync(join(dir, 'store.log'), 'utf8');
  t.is(log.trimEnd().split('\n').length, 2, 'one line for the create, one for the commit');

  // A commit torn half-way through its line must not come back as some of its writes.
  const commitLine = log.trimEnd().split('\n')[1] ?? '';
  appendFileSync(join(dir, 'store.log'), commitLine.replace(/"\/b"/, '"/c"').slice(0, commitLine.length - 12));
  const second = await openEmbedded(t, dir);
  t.deepEqual(await second.list(''), before);
  t.is((await second.get('/b'))?.revision, revision);
  t.is(await second.get('/c'), undefined);
  return undefined;
});

test('embedded: damage followed by intact records refuses to open', async (t) => {
  const dir = tempDir(t);
  const first = await EmbeddedStore.open(dir);
  await first.create('/a', '1');
  await first.close();
  appendFileSync(join(dir, 'store.log'), 'garbage\n{"t":"put","k":"/b","v":"2","r":"9"}\n');
  const err = await t.throwsAsync(EmbeddedStore.open(dir), { instanceOf: DatastoreUnavailableError });
  t.regex(err?.message ?? '', /corrupt/);
  t.false(existsSync(join(dir, 'store.lock')), 'a failed open releases the lock');
});

test('embedded: a SIGKILLed writer loses no acknowledged write', async (t) => {
  const dir = tempDir(t);
  const writer = join(__dirname, '..', 'harness', 'embedded-store-writer.js');
  for (let round = 0; round < 3; round++) {
    const lines = await runUntilKilled(t, writer, dir, `r${round}`, 300 + round * 200);
    const store = await EmbeddedStore.open(dir);
    try {
      let puts = 0;
      let counter = 0;
      for (const line of lines) {
        const [kind, a, b] = line.split(' ');
        if (kind === 'put' && a !== undefined) {
          puts++;
          t.is((await store.get(a))?.value, b, `acknowledged ${a} lost`);
        } else if (kind === 'del' && a !== undefined) {
          t.is(await store.get(a), undefined, `acknowledged delete of ${a} lost`);
        } else if (kind === 'counter') {
          counter = Math.max(counter, Number(a));
        }
      }
      t.true(puts > 0);
      t.true(Number((await store.get('/counter'))?.value ?? 0) >= counter, 'acknowledged counter update lost');
    } finally {
      await store.close();
    }
  }
});

/** Runs the writer child until it has acknowledged `minLines` writes, then SIGKILLs it at a random
 * moment shortly after. Returns the complete lines it printed. */
async function runUntilKilled(t: ExecutionContext, script: string, dir: string, tag: string, minLines: number): Promise<string[]> {
  const child = spawn(process.execPath, [script, dir, tag], { stdio: ['ignore', 'pipe', 'pipe'] });
  t.teardown(() => {
    child.kill('SIGKILL');
  });
  let out = '';
  let err = '';
  child.stderr.setEncoding('utf8').on('data', (s: string) => (err += s));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  await new Promise<void>((resolve, reject) => {
    child.stdout.setEncoding('utf8').on('data', (s: string) => {
      out += s;
      if (out.split('\n').length > minLines) resolve();
    });
    child.once('exit', (code) => reject(new Error(`writer exited early (${code}): ${err}`)));
  });
  await settle(Math.floor(Math.random() * 30));
  child.kill('SIGKILL');
  await exited;
  const lines = out.split('\n');
  lines.pop();
  return lines.filter((l) => l !== 'ready');
}

test('embedded: a second open of the same directory fails, naming it and the owner', async (t) => {
  const dir = tempDir(t);
  const first = await EmbeddedStore.open(dir);
  const err = await t.throwsAsync(EmbeddedStore.open(dir), { instanceOf: StoreLockedError });
  t.true(err?.message.includes(dir));
  t.true(err?.message.includes(String(process.pid)));
  await first.close();
  t.false(existsSync(join(dir, 'store.lock')), 'close releases the lock');
  const second = await openEmbedded(t, dir);
  t.deepEqual((await second.list('')).items, []);
});

test('embedded: a lock left by a dead process is taken over', async (t) => {
  const dir = tempDir(t);
  const dead = spawn(process.execPath, ['-e', '0']);
  const pid = dead.pid;
  await new Promise((resolve) => dead.once('exit', resolve));
  if (pid === undefined) return t.fail('no pid');
  writeFileSync(join(dir, 'store.lock'), JSON.stringify({ pid }) + '\n');
  const store = await openEmbedded(t, dir);
  t.truthy(await store.create('/k', 'v'));
  t.is(JSON.parse(readFileSync(join(dir, 'store.lock'), 'utf8')).pid, process.pid);
  return undefined;
});

test('embedded: compaction keeps data, key revisions and the store revision', async (t) => {
  const dir = tempDir(t);
  const store = await EmbeddedStore.open(dir, { compactSlackBytes: 4096, watchHistory: 10_000 });
  const listing = await store.list('');
  const rec = await record(t, store, '/', { afterRevision: listing.revision });
  let writes = 0;
  for (let i = 0; i < 200; i++) {
    const kv = await store.create(`/k/${i % 20}`, `v${i}`.padEnd(100, '.'));
    if (kv === undefined) {
      const cur = await store.get(`/k/${i % 20}`);
      if (cur !== undefined) await store.update(cur.key, `v${i}`.padEnd(100, '.'), cur.revision);
    }
    if (i % 7 === 0) await store.delete(`/k/${(i + 3) % 20}`);
    writes++;
  }
  await store.delete('/k/19');
  await store.compact();
  const before = await store.list('');
  const logBytes = statSync(join(dir, 'store.log')).size;
  t.true(logBytes < 20 * 200, `log should hold about the live keys after compaction, has ${logBytes} bytes`);
  const elapsed = Number(before.revision) - Number(listing.revision);
  const events = await rec.waitFor(elapsed);
  t.deepEqual(events.map((e) => Number(e.revision)), Array.from({ length: elapsed }, (_, i) => Number(listing.revision) + i + 1),
    'watchers see every revision across compactions');
  await store.close();

  const reopened = await openEmbedded(t, dir);
  t.deepEqual(await reopened.list(''), before, 'same keys, values and revisions');
  const next = await reopened.create('/new', 'x');
  t.is(next?.revision, String(BigInt(before.revision) + 1n), 'the store revision survives compaction');
  t.log(`${writes} writes, log ${logBytes} bytes after compaction`);
});

// ---------------------------------------------------------------------------------------------
// Store socket and backend selection

test('remote: a socket nobody serves fails with DatastoreUnavailableError', async (t) => {
  const store = new RemoteStore(join(tempDir(t), 'nobody.sock'));
  t.teardown(() => store.close());
  const err = await t.throwsAsync(store.get('/k'), { instanceOf: DatastoreUnavailableError });
  t.true(err?.message.includes('nobody.sock'));
  await t.throwsAsync(store.watch('/', { onEvent: () => undefined, onError: () => undefined }), {
    instanceOf: DatastoreUnavailableError,
  });
  t.false(await store.ping(500));
});

test('remote: oversized requests are refused', async (t) => {
  const { store } = await remote(t);
  await t.throwsAsync(store.create('/big', 'x'.repeat(9 << 20)), { instanceOf: InvalidRequestError, message: /exceeds/ });
  t.is(await store.get('/big'), undefined);
});

test('remote: the socket is private and stopping the server breaks open watches', async (t) => {
  const dir = tempDir(t);
  const backing = await openEmbedded(t, dir);
  const server = await serveStore(backing, storeSocketPath(dir));
  t.teardown(() => server.close());
  t.is(statSync(storeSocketPath(dir)).mode & 0o777, 0o600);
  await t.throwsAsync(serveStore(backing, storeSocketPath(dir)), { message: /already served/ });

  const client = new RemoteStore(storeSocketPath(dir));
  t.teardown(() => client.close());
  const rec = await record(t, client, '/');
  await server.close();
  t.true((await rec.waitForError()) instanceof DatastoreUnavailableError);
  t.false(existsSync(storeSocketPath(dir)));
});

test('remote: a stale socket file left by a dead daemon is replaced', async (t) => {
  const dir = tempDir(t);
  const backing = await openEmbedded(t, dir);
  const stale = await serveStore(backing, storeSocketPath(dir));
  // Simulate a crash: the socket file stays behind with nobody listening.
  const sockPath = storeSocketPath(dir);
  const moved = `${sockPath}.kept`;
  linkSync(sockPath, moved);
  await stale.close();
  renameSync(moved, sockPath);
  t.true(existsSync(sockPath));
  const server = await serveStore(backing, sockPath);
  t.teardown(() => server.close());
  const client = new RemoteStore(sockPath);
  t.teardown(() => client.close());
  t.true(await client.ping());
  t.teardown(() => {
    if (existsSync(moved)) unlinkSync(moved);
  });
});

test('openDatastore: client mode uses the daemon socket when served, else the directory', async (t) => {
  const dir = tempDir(t);
  const direct = await openDatastore({ dataDir: dir, mode: 'client' });
  t.true(direct instanceof EmbeddedStore);
  await direct.create('/k', 'v');
  await direct.close();

  const daemon = await openDatastore({ dataDir: dir, mode: 'daemon' });
  t.teardown(() => daemon.close());
  const server = await serveStore(daemon, storeSocketPath(dir));
  t.teardown(() => server.close());
  const client = await openDatastore({ dataDir: dir, mode: 'client' });
  t.teardown(() => client.close());
  t.true(client instanceof RemoteStore);
  t.is((await client.get('/k'))?.value, 'v');
});

test('openDatastore: etcd options select etcd', async (t) => {
  const { handle } = etcdHandles();
  const store = await openDatastore({ etcd: { endpoints: handle.endpoints }, dataDir: tempDir(t), mode: 'client' });
  t.teardown(() => store.close());
  t.true(store instanceof EtcdStore);
});

test('etcd: an unreachable endpoint fails fast without revealing credentials', async (t) => {
  const started = Date.now();
  const err = await t.throwsAsync(
    EtcdStore.open({ endpoints: ['http://127.0.0.1:1'], username: 'calico', password: 'hunter2-secret', dialTimeoutMs: 2_000 }),
    { instanceOf: DatastoreUnavailableError },
  );
  t.true(Date.now() - started < 5_000, 'gave up within a few seconds');
  t.true(err?.message.includes('http://127.0.0.1:1'));
  t.false(err?.message.includes('hunter2-secret'));
});

test('etcd: a held key lives while its client does, and goes on release or after the TTL', async (t) => {
  const { handle, admin } = etcdHandles();
  const prefix = `/held/${randomUUID()}/`;
  t.teardown(async () => {
    await admin.delete().prefix(prefix);
  });
  const owner = await EtcdStore.open({ endpoints: handle.endpoints });
  t.teardown(() => owner.close());
  const reader = await EtcdStore.open({ endpoints: handle.endpoints });
  t.teardown(() => reader.close());

  const released = await owner.holdKey(`${prefix}a`, 'alive', 2);
  await new Promise((resolve) => setTimeout(resolve, 3_000));
  t.is((await reader.get(`${prefix}a`))?.value, 'alive', 'renewed past its TTL');
  await released.release();
  t.is(await reader.get(`${prefix}a`), undefined, 'gone at once on release');

  // A client that dies without releasing: the key goes when the TTL runs out.
  const dying = await EtcdStore.open({ endpoints: handle.endpoints });
  await dying.holdKey(`${prefix}b`, 'alive', 2);
  await dying.close();
  t.is((await reader.get(`${prefix}b`))?.value, 'alive');
  let gone = false;
  for (let i = 0; i < 40 && !gone; i++) {
    await new Promise((resolve) => setTimeout(resolve, 250));
    gone = (await reader.get(`${prefix}b`)) === undefined;
  }
  t.true(gone, 'expired within 10 s of a 2 s TTL');
});
