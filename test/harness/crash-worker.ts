// Runs a crash worker (a script that sets something up, prints one line saying what, and waits),
// then SIGKILLs it: what a test process killed by ava's timeout leaves, for the reaper tests.
import { spawn } from 'node:child_process';

export interface KilledWorker {
  /** The line the worker printed, matched. */
  readonly match: RegExpExecArray;
}

/** Resolves once the worker printed a line matching `line` and has been SIGKILLed. `onSpawn`
 * gets a kill function for the caller's teardown (the worker may fail before printing). */
export async function runAndKill(script: string, line: RegExp, timeoutMs: number, onSpawn: (kill: () => void) => void): Promise<KilledWorker> {
  const worker = spawn(process.execPath, [script], { stdio: ['ignore', 'pipe', 'pipe'] });
  onSpawn(() => worker.kill('SIGKILL'));
  let stderr = '';
  worker.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  const exited = new Promise<void>((resolve) => worker.once('exit', () => resolve()));
  const match = await new Promise<RegExpExecArray>((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`crash worker: nothing printed within ${timeoutMs / 1000} s: ${stderr}`)), timeoutMs);
    worker.stdout.on('data', (b: Buffer) => {
      out += b.toString();
      const m = line.exec(out);
      if (m !== null) {
        clearTimeout(timer);
        resolve(m);
      }
    });
    worker.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`crash worker exited (${code}): ${stderr}`));
    });
  });
  worker.kill('SIGKILL');
  await exited;
  return { match };
}
