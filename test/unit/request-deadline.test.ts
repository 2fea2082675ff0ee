import test from 'ava';
import { outsideRequest, requestDeadline, withRequestDeadline } from '../../lib/request-deadline';

const tick = (ms = 1): Promise<void> => new Promise((r) => setTimeout(r, ms));

test('a request sees its deadline through everything it awaits', async (t) => {
  t.is(requestDeadline(), undefined, 'no request, no deadline');
  const before = Date.now();
  const seen = await withRequestDeadline(2_000, async () => {
    await tick();
    const first = requestDeadline();
    return [first, await tick().then(() => requestDeadline())];
  });
  for (const d of seen) {
    t.is(d?.budgetMs, 2_000);
    t.true(d !== undefined && d.at >= before + 2_000 && d.at <= Date.now() + 2_000);
  }
  t.is(requestDeadline(), undefined, 'gone after the request');
});

test('work a request starts without awaiting it runs without the deadline', async (t) => {
  let timerSaw: unknown = 'not run';
  let outsideSaw: unknown = 'not run';
  let timer: Promise<void> | undefined;
  await withRequestDeadline(1_000, async () => {
    outsideSaw = outsideRequest(() => requestDeadline());
    // A timer set by the request inherits its context; once the request is answered it no longer
    // carries a deadline.
    timer = tick(20).then(() => {
      timerSaw = requestDeadline();
    });
  });
  await timer;
  t.is(outsideSaw, undefined);
  t.is(timerSaw, undefined);
});

test('nested and concurrent requests each keep their own deadline', async (t) => {
  const [a, b] = await Promise.all([
    withRequestDeadline(1_000, async () => (await tick(), requestDeadline()?.budgetMs)),
    withRequestDeadline(3_000, async () => (await tick(), requestDeadline()?.budgetMs)),
  ]);
  t.deepEqual([a, b], [1_000, 3_000]);
  await t.throwsAsync(withRequestDeadline(1_000, async () => {
    throw new Error('handler failed');
  }), { message: 'handler failed' });
  t.is(requestDeadline(), undefined);
});
