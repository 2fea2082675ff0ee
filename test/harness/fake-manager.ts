// A sync-loop manager for tests of the loop itself: no kernel, a record of what it was asked.
import type { Manager } from '../../agent/sync-loop';
import type { KeyValue } from '../../datastore/datastore';

/** Records what the loop asks of it; cares about keys under its prefix; fails on demand. */
export class FakeManager implements Manager {
  readonly calls: string[] = [];
  readonly known = new Map<string, string>();
  failNext = false;
  applied = 0;
  private notify: (() => void) | undefined;
  constructor(
    readonly name: string,
    private readonly prefix: string,
  ) {}
  update(key: string, kv: KeyValue | undefined): boolean {
    if (!key.startsWith(this.prefix)) return false;
    if (kv === undefined) this.known.delete(key);
    else this.known.set(key, kv.value);
    this.calls.push(`update ${key.slice(this.prefix.length)}`);
    return true;
  }
  clear(): void {
    this.known.clear();
    this.calls.push('clear');
  }
  resync(): void {
    this.calls.push('resync');
  }
  async apply(): Promise<void> {
    this.calls.push(`apply ${[...this.known.values()].sort().join(',')}`);
    if (this.failNext) {
      this.failNext = false;
      throw new Error('kernel said no');
    }
    this.applied++;
    this.notify?.();
  }
  /** Resolves once apply has succeeded `n` times in all. */
  appliedTimes(n: number): Promise<void> {
    return new Promise((resolve) => {
      const check = (): void => {
        if (this.applied >= n) resolve();
      };
      this.notify = check;
      check();
    });
  }
}
