// Talking to a BIRD through its control socket with `birdc -s <socket> <words...>` (argument
// array, no shell). birdc's exit status does not tell success from failure reliably ("Network
// not found" exits 1, a refused reconfiguration may exit 0), so this resolves with the output
// whatever the status and the caller reads the text.
import { execFile } from 'node:child_process';

const BIRDC_TIMEOUT_MS = 5_000;

export interface BirdcResult {
  /** null: killed (timeout) or not started. */
  readonly code: number | null;
  readonly output: string;
}

export function birdc(socket: string, words: readonly string[], timeoutMs = BIRDC_TIMEOUT_MS): Promise<BirdcResult> {
  return new Promise((resolve) => {
    const child = execFile('birdc', ['-s', socket, ...words], { timeout: timeoutMs, killSignal: 'SIGKILL', encoding: 'utf8' }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : null;
      resolve({ code, output: `${stdout}${stderr}` });
    });
    child.stdin?.end();
  });
}

/** BIRD answers on this socket (`show status`). */
export async function birdAnswers(socket: string): Promise<boolean> {
  const r = await birdc(socket, ['show', 'status']);
  return /Daemon is up and running|Reconfiguration in progress/.test(r.output);
}
