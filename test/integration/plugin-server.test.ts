// The plugin socket's connection handling, against a real HTTP client on a real unix socket.
import test from 'ava';
import { mkdtemp, rm } from 'node:fs/promises';
import { Agent, request } from 'node:http';
import { createConnection, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startPluginServer } from '../../protocol/plugin-server';
import { route } from '../../protocol/route';

function post(agent: Agent, socketPath: string, path: string): Promise<{ body: string; socket: Socket }> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, path, method: 'POST', agent }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ body, socket: req.socket as Socket }));
    });
    req.on('error', reject);
    req.end('{}');
  });
}

// Docker's plugin client resends a request with an empty body when the connection it reused was
// closed under it (moby#35459), so the server must never close an idle connection itself. Node's
// default would close it after 5 s.
test('an idle keep-alive connection from Docker is never closed by the plugin', async (t) => {
  t.timeout(30_000);
  const dir = await mkdtemp(join(tmpdir(), 'calico-plugin-server-'));
  const server = await startPluginServer({
    name: 'test',
    socketPath: join(dir, 'test.sock'),
    apis: [{ implements: 'NetworkDriver', errorKey: 'Err', routes: [route('NetworkDriver.GetCapabilities', null, () => ({ Scope: 'local' }))] }],
  });
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  t.teardown(async () => {
    agent.destroy();
    await server.close();
    await rm(dir, { recursive: true, force: true });
  });
  const first = await post(agent, server.socketPath, '/NetworkDriver.GetCapabilities');
  t.is(first.body, '{"Scope":"local"}');
  let closedByServer = false;
  first.socket.once('end', () => (closedByServer = true));
  await new Promise((resolve) => setTimeout(resolve, 6_000));
  t.false(closedByServer, 'the server ended the idle connection');
  const second = await post(agent, server.socketPath, '/NetworkDriver.GetCapabilities');
  t.is(second.socket, first.socket, 'the second request reused the idle connection');
  t.is(second.body, '{"Scope":"local"}');
});

// Docker may hold a connection open on which it never sends a request: close must not wait for
// it (a stopping daemon hung on one), yet an answer in progress is still given before it resolves.
test('close drops connections that hold no request and lets an answer in progress finish', async (t) => {
  t.timeout(30_000);
  const dir = await mkdtemp(join(tmpdir(), 'calico-plugin-server-'));
  let started: () => void = () => undefined;
  const inHandler = new Promise<void>((resolve) => (started = resolve));
  let release: () => void = () => undefined;
  const released = new Promise<void>((resolve) => (release = resolve));
  const server = await startPluginServer({
    name: 'test',
    socketPath: join(dir, 'test.sock'),
    apis: [{
      implements: 'NetworkDriver',
      errorKey: 'Err',
      routes: [
        route('NetworkDriver.Leave', null, async () => {
          started();
          await released;
          return {};
        }),
        route('NetworkDriver.GetCapabilities', null, () => ({ Scope: 'local' })),
      ],
    }],
  });
  const agent = new Agent({ keepAlive: true });
  t.teardown(async () => {
    agent.destroy();
    release();
    await server.close();
    await rm(dir, { recursive: true, force: true });
  });
  // A connection that never sends anything, and one that had its answer and stays idle.
  const silent = createConnection(server.socketPath);
  await new Promise((resolve) => silent.once('connect', resolve));
  const silentClosed = new Promise<void>((resolve) => silent.once('close', () => resolve()));
  const slow = post(agent, server.socketPath, '/NetworkDriver.Leave');
  await inHandler;

  // A connection whose request is on the wire, not read yet, when close begins.
  const late = createConnection(server.socketPath);
  await new Promise((resolve) => late.once('connect', resolve));
  await new Promise((resolve) => setTimeout(resolve, 50));
  let lateAnswer = '';
  late.setEncoding('utf8').on('data', (d: string) => (lateAnswer += d));
  const lateDone = new Promise<void>((resolve) => late.once('close', () => resolve()));
  late.write('POST /NetworkDriver.GetCapabilities HTTP/1.1\r\nHost: plugin\r\nContent-Length: 2\r\n\r\n{}');

  let closed = false;
  const closing = server.close().then(() => (closed = true));
  await lateDone;
  t.regex(lateAnswer, /^HTTP\/1\.1 200 [\s\S]*\{"Scope":"local"\}$/, 'a request on the wire when close began is answered');
  await silentClosed;
  t.pass('the silent connection was closed');
  await new Promise((resolve) => setTimeout(resolve, 300));
  t.false(closed, 'close waits for the answer in progress');
  release();
  t.is((await slow).body, '{}', 'the answer in progress was given');
  await closing;
  t.true(closed);
});
