// `node unix-proxy.js <unix socket>`: listens on 127.0.0.1 (a free port), prints the port on one
// line, and forwards every connection byte for byte to the unix socket. etcd.ts runs it for an
// etcd inside a network namespace, so the test process reaches that etcd over TCP. A process of
// its own, not a server inside the test process: a test that blocks its event loop (execFileSync
// of calicoctl, say) would otherwise stall its own etcd connection.
import { connect, createServer } from 'node:net';

const socketPath = process.argv[2];
if (socketPath === undefined) {
  process.stderr.write('usage: unix-proxy <unix socket>\n');
  process.exit(2);
}

const server = createServer((client) => {
  const upstream = connect(socketPath);
  const end = (): void => {
    client.destroy();
    upstream.destroy();
  };
  client.on('error', end);
  upstream.on('error', end);
  client.pipe(upstream).pipe(client);
});
server.on('error', (err) => {
  process.stderr.write(`unix-proxy: ${err.message}\n`);
  process.exit(1);
});
server.listen(0, '127.0.0.1', () => {
  const addr = server.address();
  if (addr === null || typeof addr === 'string') process.exit(1);
  process.stdout.write(`${addr.port}\n`);
});
process.on('SIGTERM', () => process.exit(0));
