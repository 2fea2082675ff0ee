#!/usr/bin/env node
// The daemon: serves the NetworkDriver and IpamDriver sockets until SIGTERM/SIGINT.
import { parseConfig } from '../config/config';
import { startDaemon } from '../daemon/daemon';
import { startCommandsThrough } from '../dataplane/exec';
import { ExecHelper } from '../dataplane/exec-helper';
import { errorMessage } from '../lib/errors';
import { logger } from '../lib/log';

const log = logger('daemon');

async function main(): Promise<void> {
  const config = parseConfig(process.env);
  // Commands start from a small helper: forking the daemon itself stalls it (exec-helper.ts).
  const helper = await ExecHelper.start((why) => {
    log.warn('%s; commands now start from the daemon itself', why);
  });
  startCommandsThrough(helper);
  const daemon = await startDaemon(config);
  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) {
      process.stderr.write(`${signal} again: exiting without waiting for in-flight requests\n`);
      process.exit(1);
    }
    stopping = true;
    daemon.close().then(() => helper.close()).then(
      () => process.exit(0),
      (err: unknown) => {
        process.stderr.write(`shutdown failed: ${errorMessage(err)}\n`);
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

main().catch((err: unknown) => {
  process.stderr.write(`calico-libnetwork: ${errorMessage(err)}\n`);
  process.exit(1);
});
