// An explicit undo list for multi-step operations: each step that changes something pushes its
// inverse; on failure the inverses run newest first. Undo failures are logged, never thrown, so
// the caller reports the original error.
import { errorMessage } from './errors';
import type { Logger } from './log';

export class Undo {
  private readonly steps: (() => Promise<unknown>)[] = [];

  push(step: () => Promise<unknown>): void {
    this.steps.push(step);
  }

  async run(log: Logger): Promise<void> {
    while (this.steps.length > 0) {
      const step = this.steps.pop() as () => Promise<unknown>;
      try {
        await step();
      } catch (err) {
        log.error('rollback step failed: %s', errorMessage(err));
      }
    }
  }
}
