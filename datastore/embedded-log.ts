// The embedded store's on-disk form: one file of JSON lines. Each committed change is appended and
// fdatasync'ed before it is acknowledged, so the file always holds every acknowledged write; a
// crash can only leave an unacknowledged, possibly torn, tail, which replay drops. Compaction
// rewrites the live keys into a temp file and renames it over the log, so a crash at any point
// leaves either the old or the new complete file.
import { open, readFile, rename, truncate, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import { errno, fsyncDir, unlinkIfPresent } from './fs-util';

export interface StoredEntry {
  readonly value: string;
  /** Store revision of the last write to the key. */
  readonly revision: bigint;
}

/** One committed mutation; `value` undefined means the key was deleted. */
export interface LogChange {
  readonly key: string;
  readonly value?: string;
  readonly revision: bigint;
}

export interface ReplayResult {
  readonly entries: Map<string, StoredEntry>;
  readonly revision: bigint;
  /** Length of the intact prefix; anything after it is a torn, never-acknowledged tail. */
  readonly validBytes: number;
  readonly fileBytes: number;
  readonly exists: boolean;
}

type LogRecord =
  | { readonly t: 'put'; readonly k: string; readonly v: string; readonly r: string }
  | { readonly t: 'del'; readonly k: string; readonly r: string }
  /** Written first by compaction: deleted keys may have carried revisions above every live one. */
  | { readonly t: 'rev'; readonly r: string }
  /** A multi-key commit on one line, so a torn tail drops all of it or none. `v` absent: delete. */
  | { readonly t: 'txn'; readonly r: string; readonly c: ReadonlyArray<{ readonly k: string; readonly v?: string }> };

const NEWLINE = 0x0a;
const SNAPSHOT_CHUNK_BYTES = 1 << 20;

export async function replayLog(path: string): Promise<ReplayResult> {
  let buf: Buffer;
  try {
    buf = await readFile(path);
  } catch (err) {
    if (errno(err) !== 'ENOENT') throw err;
    return { entries: new Map(), revision: 0n, validBytes: 0, fileBytes: 0, exists: false };
  }
  const entries = new Map<string, StoredEntry>();
  let revision = 0n;
  let validBytes = 0;
  let firstBad: number | undefined;
  for (let pos = 0; pos < buf.length; ) {
    const end = buf.indexOf(NEWLINE, pos);
    if (end < 0) break;
    const record = parseRecord(buf.subarray(pos, end).toString('utf8'));
    if (record === undefined) {
      firstBad ??= pos;
    } else if (firstBad !== undefined) {
      // Only the unacknowledged tail can be damaged by a crash; damage followed by intact records
      // means the file was corrupted some other way, and dropping the rest would lose data.
      throw new Error(`datastore log ${path} is corrupt at byte ${firstBad}: an unreadable record is followed by valid ones`);
    } else {
      revision = applyRecord(entries, record, revision);
      validBytes = end + 1;
    }
    pos = end + 1;
  }
  return { entries, revision, validBytes, fileBytes: buf.length, exists: true };
}

export class LogWriter {
  private constructor(
    private readonly fh: FileHandle,
    private size: number,
  ) {}

  /** Opens the log for appending after cutting off a torn tail, so new records never continue a
   * half-written line. */
  static async open(path: string, replay: Pick<ReplayResult, 'exists' | 'fileBytes' | 'validBytes'>): Promise<LogWriter> {
    if (replay.fileBytes > replay.validBytes) {
      await truncate(path, replay.validBytes);
    }
    const fh = await open(path, 'a', 0o600);
    try {
      if (replay.fileBytes > replay.validBytes) await fh.datasync();
      if (!replay.exists) await fsyncDir(dirname(path));
    } catch (err) {
      await fh.close();
      throw err;
    }
    return new LogWriter(fh, replay.validBytes);
  }

  get bytes(): number {
    return this.size;
  }

  /** Resolves once the commits are on stable storage. The changes of one commit share a revision
   * and are written as one record. */
  async append(commits: ReadonlyArray<readonly LogChange[]>): Promise<void> {
    const buf = Buffer.from(commits.map((c) => encodeCommit(c)).join(''), 'utf8');
    await writeAll(this.fh, buf);
    await this.fh.datasync();
    this.size += buf.length;
  }

  async close(): Promise<void> {
    await this.fh.close();
  }
}

/** Atomically replaces the log with one holding just the live entries and returns its size. Once
 * this resolves, appends through an older LogWriter go to the unlinked file: the caller must open a
 * new writer and then fsync the directory. If it throws, the old log is still in place. */
export async function writeSnapshot(path: string, entries: ReadonlyMap<string, StoredEntry>, revision: bigint): Promise<number> {
  const tmp = `${path}.tmp`;
  const fh = await open(tmp, 'w', 0o600);
  let size = 0;
  try {
    let chunk: string[] = [encode({ t: 'rev', r: revision.toString() })];
    let chunkLength = 0;
    const flush = async (): Promise<void> => {
      const buf = Buffer.from(chunk.join(''), 'utf8');
      await writeAll(fh, buf);
      size += buf.length;
      chunk = [];
      chunkLength = 0;
    };
    for (const [key, entry] of entries) {
      const line = encodeChange({ key, value: entry.value, revision: entry.revision });
      chunk.push(line);
      chunkLength += line.length;
      if (chunkLength >= SNAPSHOT_CHUNK_BYTES) await flush();
    }
    await flush();
    await fh.sync();
  } catch (err) {
    await fh.close();
    await unlinkIfPresent(tmp);
    throw err;
  }
  await fh.close();
  try {
    await rename(tmp, path);
  } catch (err) {
    await unlinkIfPresent(tmp);
    throw err;
  }
  return size;
}

/** A snapshot interrupted before its rename is garbage. */
export async function removeSnapshotLeftover(path: string): Promise<void> {
  await unlinkIfPresent(`${path}.tmp`);
}

function encodeCommit(changes: readonly LogChange[]): string {
  const [first] = changes;
  if (first === undefined) return '';
  if (changes.length === 1) return encodeChange(first);
  const c = changes.map((x) => (x.value === undefined ? { k: x.key } : { k: x.key, v: x.value }));
  return encode({ t: 'txn', r: first.revision.toString(), c });
}

function encodeChange(c: LogChange): string {
  const r = c.revision.toString();
  return encode(c.value === undefined ? { t: 'del', k: c.key, r } : { t: 'put', k: c.key, v: c.value, r });
}

function encode(record: LogRecord): string {
  return JSON.stringify(record) + '\n';
}

function parseRecord(line: string): LogRecord | undefined {
  let raw: unknown;
  try {
    raw = JSON.parse(line);
  } catch {
    return undefined;
  }
  if (typeof raw !== 'object' || raw === null) return undefined;
  const t: unknown = Reflect.get(raw, 't');
  const k: unknown = Reflect.get(raw, 'k');
  const v: unknown = Reflect.get(raw, 'v');
  const r: unknown = Reflect.get(raw, 'r');
  if (typeof r !== 'string' || !/^\d+$/.test(r)) return undefined;
  if (t === 'rev') return { t, r };
  if (t === 'del' && typeof k === 'string') return { t, k, r };
  if (t === 'put' && typeof k === 'string' && typeof v === 'string') return { t, k, v, r };
  if (t === 'txn') return parseTxnRecord(Reflect.get(raw, 'c'), r);
  return undefined;
}

function parseTxnRecord(raw: unknown, r: string): LogRecord | undefined {
  if (!Array.isArray(raw)) return undefined;
  const c: Array<{ k: string; v?: string }> = [];
  for (const item of raw as unknown[]) {
    if (typeof item !== 'object' || item === null) return undefined;
    const k: unknown = Reflect.get(item, 'k');
    const v: unknown = Reflect.get(item, 'v');
    if (typeof k !== 'string' || (v !== undefined && typeof v !== 'string')) return undefined;
    c.push(v === undefined ? { k } : { k, v });
  }
  return { t: 'txn', r, c };
}

function applyRecord(entries: Map<string, StoredEntry>, record: LogRecord, revision: bigint): bigint {
  const r = BigInt(record.r);
  if (record.t === 'put') entries.set(record.k, { value: record.v, revision: r });
  if (record.t === 'del') entries.delete(record.k);
  if (record.t === 'txn') {
    for (const c of record.c) {
      if (c.v === undefined) entries.delete(c.k);
      else entries.set(c.k, { value: c.v, revision: r });
    }
  }
  return r > revision ? r : revision;
}

async function writeAll(fh: FileHandle, buf: Buffer): Promise<void> {
  for (let off = 0; off < buf.length; ) {
    const { bytesWritten } = await fh.write(buf, off, buf.length - off);
    off += bytesWritten;
  }
}
