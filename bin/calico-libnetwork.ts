#!/usr/bin/env node
// The daemon: serves the NetworkDriver and IpamDriver sockets until SIGTERM/SIGINT.
import { parseConfig } from '../config/config';
import { startDaemon, type Daemon } from '../daemon/daemon';
import { startCommandsNatively, startCommandsThrough } from '../dataplane/exec';
import { ExecHelper } from '../dataplane/exec-helper';
import { useNative } from '../dataplane/native-addon';
import { errorMessage } from '../lib/errors';
import { logger } from '../lib/log';

const log = logger('daemon');

async function main(): Promise<void> {
  // A tool started natively holds a thread-pool thread while it runs, and file writes (the
  // embedded store) and netlink requests share that pool: room beyond libuv's default of 4.
  // Read when the pool first starts, which is later.
  process.env['UV_THREADPOOL_SIZE'] ??= '16';
  const config = parseConfig(process.env);
  useNative(config.native);
  // Tools start without forking the daemon (native posix_spawn), or else from a small helper:
  // forking the daemon itself stalls it (exec-helper.ts).
  const helper = startCommandsNatively(true) ? undefined : await ExecHelper.start((why) => {
    log.warn('%s; commands now start from the daemon itself', why);
  });
  startCommandsThrough(helper);
  // Handlers first: a stop signal while the daemon starts (its sockets may already be served)
  // waits for the start and then shuts down cleanly; with the default action it would die and
  // leave its sockets behind.
  let daemon: Daemon | undefined;
  let stopping = false;
  const shutdown = (d: Daemon): void => {
    d.close().then(() => helper?.close()).then(
      () => process.exit(0),
      (err: unknown) => {
        process.stderr.write(`shutdown failed: ${errorMessage(err)}\n`);
        process.exit(1);
      },
    );
  };
  const stop = (signal: string): void => {
    if (stopping) {
      process.stderr.write(`${signal} again: exiting without waiting for in-flight requests\n`);
      process.exit(1);
    }
    stopping = true;
    if (daemon === undefined) log.info('%s during start: stopping once started', signal);
    else shutdown(daemon);
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  daemon = await startDaemon(config);
  if (stopping) shutdown(daemon);
}

main().catch((err: unknown) => {
  process.stderr.write(`calico-libnetwork: ${errorMessage(err)}\n`);
  process.exit(1);
});
