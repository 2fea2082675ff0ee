// Host-address detection against a real kernel: a throwaway namespace with dummy interfaces.
import test, { type ExecutionContext } from 'ava';
import { parseHostAddressSetting } from '../../config/host-address';
import { NoHostAddressError, detectHostAddress } from '../../daemon/host-address';
import { run } from '../../dataplane/exec';
import { createNetns, deleteNetns } from '../harness/netns';

async function hostNamespace(t: ExecutionContext): Promise<string> {
  const ns = await createNetns('caddr');
  t.teardown(() => deleteNetns(ns));
  const ip = (...args: string[]) => run('ip', ['-n', ns, ...args], args.join(' '));
  // A docker0 first (first-found must skip it), then two "NICs": veth pairs, so they have carrier
  // (this kernel has no dummy interfaces).
  for (const [name, addr] of [
    ['docker0', '172.17.0.1/16'],
    ['ens3', '198.18.1.5/24'],
    ['ens4', '198.19.2.7/16'],
  ] as const) {
    await ip('link', 'add', name, 'type', 'veth', 'peer', 'name', `${name}-peer`);
    await ip('addr', 'add', addr, 'dev', name);
    await ip('link', 'set', name, 'up');
    await ip('link', 'set', `${name}-peer`, 'up');
  }
  await ip('-6', 'addr', 'add', 'fd00:5::5/64', 'dev', 'ens4', 'nodad');
  await ip('route', 'add', '198.20.0.0/16', 'via', '198.19.0.1');
  return ns;
}

test('first-found, interface=, can-reach= and a configured address, in a real namespace', async (t) => {
  const netns = await hostNamespace(t);
  const detect = (env: Record<string, string>, family: 4 | 6 = 4) => detectHostAddress(parseHostAddressSetting(env, family), family, { netns });
  t.deepEqual(await detect({}), { cidr: '198.18.1.5/24', interface: 'ens3' });
  t.deepEqual(await detect({ IP_AUTODETECTION_METHOD: 'interface=ens4' }), { cidr: '198.19.2.7/16', interface: 'ens4' });
  t.deepEqual(await detect({ IP_AUTODETECTION_METHOD: 'can-reach=198.20.3.4' }), { cidr: '198.19.2.7/16', interface: 'ens4' });
  t.deepEqual(await detect({ IP6: 'autodetect' }, 6), { cidr: 'fd00:5::5/64', interface: 'ens4' });
  t.deepEqual(await detect({ IP: '198.19.2.7' }), { cidr: '198.19.2.7/16', interface: 'ens4' }, 'prefix completed from the interface');
  t.is(await detect({}, 6), undefined, 'IP6 defaults to none');
  await t.throwsAsync(detect({ IP_AUTODETECTION_METHOD: 'can-reach=203.0.113.1' }), {
    instanceOf: NoHostAddressError,
    message: /no IPv4 address found for this host with IP_AUTODETECTION_METHOD=can-reach=203\.0\.113\.1/,
  });
  await t.throwsAsync(detect({ IP_AUTODETECTION_METHOD: 'interface=wlan0' }), { instanceOf: NoHostAddressError });
});
