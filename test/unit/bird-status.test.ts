import test from 'ava';
import { BirdcError, bgpSessions, parseProtocols, peerTypeLabel } from '../../bgp/bird-status';

const SHOW_PROTOCOLS = `BIRD 2.0.12 ready.
Name       Proto      Table      State  Since         Info
calico_device Device     ---        up     2026-11-30 20:42:10
calico_direct Direct     ---        up     2026-11-30 20:42:10
calico_kernel Kernel     master4    up     2026-11-30 20:42:10
calico_exports Static     master4    up     2026-11-30 20:42:10
mesh_198_18_1_12 BGP        ---        up     2026-11-30 20:42:12  Established
global_198_18_1_1 BGP        ---        start  2026-11-30 20:42:10  Active        Socket: Connection refused
node_198_18_2_1 BGP        ---        start  2026-11-30 20:42:10  Connect
`;

test('show protocols: every row, Since with date and time, Info with BIRD\'s last error', (t) => {
  const rows = parseProtocols(SHOW_PROTOCOLS);
  t.is(rows.length, 7);
  t.deepEqual(rows[5], { name: 'global_198_18_1_1', proto: 'BGP', table: '---', state: 'start', since: '2026-11-30 20:42:10', info: 'Active        Socket: Connection refused' });
  t.is(rows[0]?.info, '');
});

test('BGP sessions: ours only, with kind and address from the protocol name', (t) => {
  const sessions = bgpSessions(parseProtocols(SHOW_PROTOCOLS));
  t.deepEqual(sessions.map((s) => [s.peerAddress, peerTypeLabel(s.kind), s.state, s.info.split(/\s+/)[0]]), [
    ['198.18.1.1', 'global', 'start', 'Active'],
    ['198.18.1.12', 'node-to-node mesh', 'up', 'Established'],
    ['198.18.2.1', 'node specific', 'start', 'Connect'],
  ]);
});

test('a BGP protocol not named by us is left out', (t) => {
  const text = 'BIRD 2.0.12 ready.\nName       Proto      Table      State  Since         Info\nupstream   BGP        ---        up     2026-11-30 20:42:12  Established\n';
  t.deepEqual(bgpSessions(parseProtocols(text)), []);
});

test('an answer without the table is an error carrying BIRD\'s words (birdc may exit 0 or 1)', (t) => {
  const err = t.throws(() => parseProtocols('BIRD 2.0.12 ready.\nAccess denied\n'), { instanceOf: BirdcError });
  t.regex(err?.message ?? '', /Access denied/);
  t.throws(() => parseProtocols('Unable to connect to server control socket (/run/x/bird.ctl): No such file or directory\n'), { instanceOf: BirdcError, message: /Unable to connect/ });
  t.throws(() => parseProtocols(''), { instanceOf: BirdcError });
});
