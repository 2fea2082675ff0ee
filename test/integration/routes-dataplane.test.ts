// The routes dataplane against a real kernel, in a throwaway namespace.
import test, { type ExecutionContext } from 'ava';
import { run } from '../../dataplane/exec';
import { type KernelRoute, RoutesDataplane } from '../../dataplane/routes';
import { createNetns, deleteNetns } from '../harness/netns';

const PROTO = 201;

async function hostNamespace(t: ExecutionContext): Promise<string> {
  const ns = await createNetns('croute');
  t.teardown(() => deleteNetns(ns));
  const ip = (...args: string[]) => run('ip', ['-n', ns, ...args], args.join(' '));
  await ip('link', 'add', 'fab0', 'type', 'veth', 'peer', 'name', 'fab0-peer');
  await ip('addr', 'add', '198.18.10.1/24', 'dev', 'fab0');
  await ip('link', 'set', 'fab0', 'up');
  await ip('link', 'set', 'fab0-peer', 'up');
  // Someone else's route in the same table (an operator's, Docker's): never ours to touch.
  await ip('route', 'add', '10.9.0.0/16', 'via', '198.18.10.254');
  return ns;
}

async function routes(ns: string): Promise<string[]> {
  const { stdout } = await run('ip', ['-n', ns, '-4', 'route', 'show'], 'show routes');
  return stdout.trim().split('\n').map((l) => l.trim()).filter((l) => !l.includes('fab0 proto kernel')).sort();
}

test('writes its plan, removes only its own strays, and repairs what was changed by hand', async (t) => {
  const ns = await hostNamespace(t);
  const warnings: string[] = [];
  const dp = new RoutesDataplane({ protocol: PROTO, netns: ns, warn: (m) => warnings.push(m) });
  const plan: KernelRoute[] = [
    { kind: 'blackhole', dst: '10.0.0.0/26', family: 4 },
    { kind: 'via', dst: '10.0.0.64/26', via: '198.18.10.2', family: 4 },
    { kind: 'via', dst: '10.0.0.5/32', via: '198.18.10.2', family: 4 },
  ];
  await dp.apply(plan);
  t.deepEqual(await routes(ns), [
    '10.0.0.5 via 198.18.10.2 dev fab0 proto 201',
    '10.0.0.64/26 via 198.18.10.2 dev fab0 proto 201',
    '10.9.0.0/16 via 198.18.10.254 dev fab0',
    'blackhole 10.0.0.0/26 proto 201',
  ]);

  // A route moves to another host, a borrowed address goes away.
  await dp.apply([plan[0]!, { kind: 'via', dst: '10.0.0.64/26', via: '198.18.10.3', family: 4 }]);
  t.deepEqual(await routes(ns), [
    '10.0.0.64/26 via 198.18.10.3 dev fab0 proto 201',
    '10.9.0.0/16 via 198.18.10.254 dev fab0',
    'blackhole 10.0.0.0/26 proto 201',
  ]);

  // Changed by hand: a resync reads the kernel back and puts it right.
  await run('ip', ['-n', ns, 'route', 'del', 'blackhole', '10.0.0.0/26'], 'delete by hand');
  await run('ip', ['-n', ns, 'route', 'add', '10.0.7.0/26', 'via', '198.18.10.9', 'proto', String(PROTO)], 'stray by hand');
  dp.resync();
  await dp.apply([plan[0]!, { kind: 'via', dst: '10.0.0.64/26', via: '198.18.10.3', family: 4 }]);
  t.deepEqual(await routes(ns), [
    '10.0.0.64/26 via 198.18.10.3 dev fab0 proto 201',
    '10.9.0.0/16 via 198.18.10.254 dev fab0',
    'blackhole 10.0.0.0/26 proto 201',
  ]);

  // A next hop the kernel cannot use does not keep the other routes out.
  await dp.apply([...plan.slice(0, 1), { kind: 'via', dst: '10.0.1.0/26', via: '203.0.113.1', family: 4 }, { kind: 'via', dst: '10.0.2.0/26', via: '198.18.10.4', family: 4 }]);
  t.true((await routes(ns)).includes('10.0.2.0/26 via 198.18.10.4 dev fab0 proto 201'));
  t.is(warnings.length, 1);

  await dp.apply([]);
  t.deepEqual(await routes(ns), ['10.9.0.0/16 via 198.18.10.254 dev fab0'], 'everything of ours gone, nothing else');
});
