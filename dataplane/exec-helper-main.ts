// The exec helper's own process (see exec-helper.ts): runs each command it is sent with execFile
// and sends back what execFile reported. It holds almost no memory, so forking it is cheap, and
// the daemon's event loop never stalls on a fork.
import { execFile } from 'node:child_process';
import type { HelperReply, HelperRequest } from './exec-helper';

function serve(send: (reply: HelperReply) => void): void {
  process.on('message', (req: HelperRequest) => {
    const child = execFile(req.file, req.args, {
      timeout: req.timeoutMs,
      killSignal: 'SIGKILL',
      maxBuffer: req.maxBufferBytes,
      encoding: 'utf8',
      windowsHide: true,
    }, (err, stdout, stderr) => {
      const e = err as (Error & { code?: number | string | null; killed?: boolean; signal?: NodeJS.Signals | null }) | null;
      send({
        id: req.id,
        stdout: String(stdout ?? ''),
        stderr: String(stderr ?? ''),
        ...(e !== null && { error: { message: e.message, code: e.code ?? null, killed: e.killed ?? false, signal: e.signal ?? null } }),
      });
    });
    child.stdin?.on('error', () => undefined);
    child.stdin?.end(req.input);
  });
  // The daemon decides when to stop: a Ctrl-C reaches the whole process group, and the daemon may
  // still need to run commands while it shuts down. Its exit closes the channel, which ends this.
  process.on('SIGINT', () => undefined);
  process.on('SIGTERM', () => undefined);
  process.on('disconnect', () => process.exit(0));
}

const send = process.send?.bind(process);
if (send === undefined) {
  process.stderr.write('exec-helper: started without an IPC channel; it is started by the daemon\n');
  process.exit(2);
}
// A reply the daemon can no longer take (it is exiting) is dropped: nobody waits for it.
serve((reply) => void send(reply, undefined, undefined, () => undefined));
