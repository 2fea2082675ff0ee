// ipset members changed over netlink (dataplane/netlink/ipset.ts, as the policy dataplane does for
// a container coming or going) leave the sets exactly as `ipset -exist restore` of the same lines
// does, in throwaway namespaces; a refusal names the set and member.
import test from 'ava';
import { membershipChanges, membershipMessage } from '../../dataplane/netlink/ipset.js';
import { NetlinkSocket } from '../../dataplane/netlink/socket.js';
import { refusalOf } from '../../dataplane/netlink/wire.js';
import { execInNetns, netnsRegistry } from '../harness/netns.js';

const SETS = [
  'create t4ip hash:ip family inet',
  'create t4net hash:net family inet',
  'create t6ip hash:ip family inet6',
  'create t6net hash:net family inet6',
  'add t4ip 10.0.0.9',
  'add t4net 10.9.0.0/16',
  'add t6ip fd00::9',
].join('\n') + '\n';

const CHANGES = [
  'add t4ip 10.0.0.1',
  'add t4ip 10.0.0.9', // already there: fine, as with -exist
  'del t4ip 10.0.0.7', // not there: fine
  'del t4ip 10.0.0.9',
  'add t4net 10.1.0.0/24',
  'add t4net 10.2.0.5', // a host entry in a net set
  'del t4net 10.9.0.0/16',
  'add t6ip fd00::1',
  'del t6ip fd00::9',
  'add t6net fd01::/64',
].join('\n') + '\n';

async function saved(ns: string): Promise<string[]> {
  const { stdout } = await execInNetns(ns, 'ipset', ['save']);
  return stdout.split('\n').filter((l) => l.startsWith('add ')).sort();
}

test('members changed over netlink equal `ipset -exist restore` of the same lines; a refusal names set and member', async (t) => {
  const reg = netnsRegistry(t);
  const [viaNetlink, viaTool] = [await reg.create('cis'), await reg.create('cis')];
  for (const ns of [viaNetlink, viaTool]) await execInNetns(ns, 'ipset', ['restore'], { input: SETS });

  await execInNetns(viaTool, 'ipset', ['-exist', 'restore'], { input: CHANGES });
  const changes = membershipChanges(CHANGES);
  if (changes === undefined) throw new Error('CHANGES are all add and del lines');
  const socket = NetlinkSocket.open('netfilter', viaNetlink);
  if (socket === undefined) throw new Error('the native addon is not loaded');
  try {
    const result = await socket.transact(changes.map((c) => membershipMessage(socket.nextSeq(), c)));
    t.is(result.lost, undefined);
    t.is(result.replies.length, changes.length);
    for (const r of result.replies) t.is(refusalOf(r), undefined);

    const expected = await saved(viaTool);
    t.deepEqual(await saved(viaNetlink), expected);
    t.true(expected.includes('add t4net 10.2.0.5') && expected.includes('add t6net fd01::/64'), expected.join('\n'));

    // A set that does not exist: refused, with errno ENOENT; nothing after it is sent.
    const refused = await socket.transact([
      membershipMessage(socket.nextSeq(), { op: 'add', set: 'nosuchset', member: '10.0.0.2' }),
      membershipMessage(socket.nextSeq(), { op: 'add', set: 't4ip', member: '10.0.0.3' }),
    ]);
    t.is(refused.replies.length, 1);
    t.deepEqual(refusalOf(refused.replies[0] ?? []), { errno: 2 });
    t.false((await saved(viaNetlink)).includes('add t4ip 10.0.0.3'));
  } finally {
    await socket.close();
  }
});
