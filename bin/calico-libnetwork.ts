#!/usr/bin/env node
// The daemon: serves the NetworkDriver and IpamDriver sockets until SIGTERM/SIGINT.
import { parseConfig } from '../config/config';
import { startDaemon } from '../daemon/daemon';
import { errorMessage } from '../lib/errors';

async function main(): Promise<void> {
  const config = parseConfig(process.env);
  const daemon = await startDaemon(config);
  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) {
      process.stderr.write(`${signal} again: exiting without waiting for in-flight requests\n`);
      process.exit(1);
    }
    stopping = true;
    daemon.close().then(
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
