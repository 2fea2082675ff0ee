import test from 'ava';
import { isLoopback, parseHealthListen } from '../../config/health-listen';
import { parseConfig } from '../../config/config';
import { ConfigError } from '../../lib/errors';
import { agentCheck, composeReadiness, runCheck } from '../../daemon/health';

test('health listen: default loopback 9099, none turns it off', (t) => {
  t.deepEqual(parseHealthListen(undefined, false), { host: '127.0.0.1', port: 9099 });
  t.deepEqual(parseHealthListen('  ', false), { host: '127.0.0.1', port: 9099 });
  t.is(parseHealthListen('none', false), undefined);
  t.is(parseHealthListen('NONE', false), undefined);
  t.deepEqual(parseHealthListen('127.0.0.2:19099', false), { host: '127.0.0.2', port: 19099 });
  t.deepEqual(parseHealthListen('[::1]:9099', false), { host: '::1', port: 9099 });
  t.deepEqual(parseHealthListen('localhost:1', false), { host: 'localhost', port: 1 });
});

test('health listen: malformed addresses are refused naming the variable', (t) => {
  for (const bad of ['9099', '127.0.0.1', '127.0.0.1:0', '127.0.0.1:65536', '::1:9099', '[127.0.0.1]:80', 'example.com:80', '127.0.0.1:80x', '[::1]']) {
    const err = t.throws(() => parseHealthListen(bad, false), { instanceOf: ConfigError }, bad);
    t.regex(err.message, /CALICO_HEALTH_LISTEN/);
  }
});

test('health listen: non-loopback only with CALICO_HEALTH_ALLOW_REMOTE', (t) => {
  t.throws(() => parseHealthListen('0.0.0.0:9099', false), { message: /not a loopback address.*CALICO_HEALTH_ALLOW_REMOTE/ });
  t.throws(() => parseHealthListen('[::]:9099', false), { message: /not a loopback/ });
  t.deepEqual(parseHealthListen('0.0.0.0:9099', true), { host: '0.0.0.0', port: 9099 });
  t.true(isLoopback('127.1.2.3'));
  t.true(isLoopback('::1'));
  t.false(isLoopback('10.0.0.1'));
  t.false(isLoopback('::'));
});

test('config: healthListen from the environment', (t) => {
  t.deepEqual(parseConfig({}, 'h').healthListen, { host: '127.0.0.1', port: 9099 });
  t.is(parseConfig({ CALICO_HEALTH_LISTEN: 'none' }, 'h').healthListen, undefined);
  t.deepEqual(parseConfig({ CALICO_HEALTH_LISTEN: '192.0.2.1:80', CALICO_HEALTH_ALLOW_REMOTE: 'true' }, 'h').healthListen, { host: '192.0.2.1', port: 80 });
  t.throws(() => parseConfig({ CALICO_HEALTH_LISTEN: '192.0.2.1:80' }, 'h'), { instanceOf: ConfigError });
});

test('readiness: 200 only when every check passes; 503 names each failing check and why', (t) => {
  const ok = composeReadiness([{ name: 'datastore', ok: true }, { name: 'docker', ok: true }]);
  t.is(ok.status, 200);
  t.deepEqual(ok.body, { status: 'ok', checks: { datastore: { ok: true }, docker: { ok: true } }, failing: [] });
  const bad = composeReadiness([{ name: 'datastore', ok: true }, { name: 'agent', ok: false, reason: 'x' }, { name: 'docker', ok: false }]);
  t.is(bad.status, 503);
  t.deepEqual(bad.body.failing, ['agent', 'docker']);
  t.deepEqual(bad.body.checks['agent'], { ok: false, reason: 'x' });
  t.deepEqual(bad.body.checks['docker'], { ok: false, reason: 'failed' });
});

test('readiness: the agent is ready after its first sync with no failure pending', (t) => {
  t.false(agentCheck({ synced: false }).ok);
  t.regex(agentCheck({ synced: false }).reason ?? '', /first sync/);
  t.true(agentCheck({ synced: true }).ok);
  const failing = agentCheck({ synced: true, failure: 'programming the kernel failed: policy: boom' });
  t.false(failing.ok);
  t.regex(failing.reason ?? '', /boom/);
});

test('runCheck: passes, fails with the reason, times out', async (t) => {
  t.deepEqual(await runCheck('a', async () => undefined, 1000), { name: 'a', ok: true });
  const failed = await runCheck('b', () => Promise.reject(new Error('ENOENT')), 1000, (r) => `docker: ${r}`);
  t.deepEqual(failed, { name: 'b', ok: false, reason: 'docker: ENOENT' });
  const slow = await runCheck('c', () => new Promise<void>(() => undefined), 50);
  t.false(slow.ok);
  t.regex(slow.reason ?? '', /no answer within 50ms/);
});
