// calicoctl's BGP commands against a running daemon's embedded store: peers, mesh and AS settings
// stored as given; bad input refused with a clear message and nothing stored; `node status` where
// no BIRD runs says so.
import test from 'ava';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { calicoctl, startPlugin, type Plugin } from '../harness/plugin';

let plugin: Plugin;

test.before(async () => {
  plugin = await startPlugin({ dockerSocket: '/nonexistent/docker.sock', ipv4Pool: '198.18.68.0/24', env: { IP: '198.18.200.8/24' } });
});

test.after.always(async () => {
  await plugin?.cleanup();
});

test.serial('peers, mesh, default AS and a host\'s AS and reflector role are stored and listed', async (t) => {
  const add = await calicoctl(plugin, ['bgp', 'peer', 'add', '198.18.200.1', '--as', '65000']);
  t.is(add.code, 0, add.stderr);
  t.regex(add.stdout, /added global BGP peer 198\.18\.200\.1 AS 65000/);
  const node = await calicoctl(plugin, ['bgp', 'peer', 'add', '198.18.200.2', '--as', '4200000000', '--node', 'hostA']);
  t.regex(node.stdout, /added node-specific \(hostA\) BGP peer 198\.18\.200\.2 AS 4200000000/);
  t.regex((await calicoctl(plugin, ['bgp', 'peer', 'add', '198.18.200.1', '--as', '65001'])).stdout, /updated global BGP peer/);
  const list = JSON.parse((await calicoctl(plugin, ['bgp', 'peer', 'list', '-o', 'json'])).stdout) as unknown[];
  t.deepEqual(list, [{ scope: 'global', address: '198.18.200.1', asNumber: 65001 }, { scope: 'node hostA', address: '198.18.200.2', asNumber: 4200000000 }]);

  t.regex((await calicoctl(plugin, ['bgp', 'config', 'show'])).stdout, /node-to-node mesh on, default AS 64512/);
  t.regex((await calicoctl(plugin, ['bgp', 'config', 'set', '--mesh', 'off'])).stdout, /mesh off, default AS 64512/);
  t.regex((await calicoctl(plugin, ['bgp', 'config', 'set', '--as', '64513'])).stdout, /mesh off, default AS 64513/);
  t.regex((await calicoctl(plugin, ['node', 'set', 'hostA', '--as', '64600', '--route-reflector', '1.0.0.1'])).stdout, /node hostA: AS 64600, route reflector 1\.0\.0\.1/);
  t.regex((await calicoctl(plugin, ['node', 'set', 'hostA', '--as', 'default'])).stdout, /node hostA: AS default, route reflector 1\.0\.0\.1/);
  t.regex((await calicoctl(plugin, ['node', 'set', 'hostA', '--route-reflector', 'none'])).stdout, /node hostA: AS default, route reflector no/);

  t.is((await calicoctl(plugin, ['bgp', 'peer', 'remove', '198.18.200.2', '--node', 'hostA'])).code, 0);
  const gone = await calicoctl(plugin, ['bgp', 'peer', 'remove', '198.18.200.2', '--node', 'hostA']);
  t.not(gone.code, 0);
  t.regex(gone.stderr, /no node-specific \(hostA\) BGP peer 198\.18\.200\.2/);
});

const refused: [string, string[], RegExp][] = [
  ['an address with configuration in it', ['bgp', 'peer', 'add', '198.18.200.9;}', '--as', '65000'], /peer address must be an IPv4 address/],
  ['an IPv6 peer', ['bgp', 'peer', 'add', 'fd00::1', '--as', '65000'], /peer address must be an IPv4 address/],
  ['AS 0', ['bgp', 'peer', 'add', '198.18.200.9', '--as', '0'], /--as must be an integer from 1 to 4294967295/],
  ['AS beyond 32 bits', ['bgp', 'peer', 'add', '198.18.200.9', '--as', '4294967296'], /--as must be an integer from 1 to 4294967295/],
  ['AS with text', ['bgp', 'peer', 'add', '198.18.200.9', '--as', '65000;'], /--as must be an AS number/],
  ['no AS', ['bgp', 'peer', 'add', '198.18.200.9'], /usage: calicoctl bgp peer add/],
  ['a node name with a brace', ['bgp', 'peer', 'add', '198.18.200.9', '--as', '65000', '--node', 'h}'], /'h}' is not a node name/],
  ['a mesh value', ['bgp', 'config', 'set', '--mesh', 'maybe'], /--mesh must be on or off/],
  ['a cluster ID that is not an address', ['node', 'set', 'hostA', '--route-reflector', 'rr-1'], /cluster ID must be an IPv4 address/],
];
for (const [what, args, message] of refused) {
  test.serial(`refused, nothing stored: ${what}`, async (t) => {
    const before = (await calicoctl(plugin, ['bgp', 'peer', 'list', '-o', 'json'])).stdout;
    const r = await calicoctl(plugin, args);
    t.not(r.code, 0);
    t.regex(r.stderr, message);
    t.is((await calicoctl(plugin, ['bgp', 'peer', 'list', '-o', 'json'])).stdout, before);
  });
}

test.serial('node status where no BIRD runs: a clear error, not a table', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'bgp-nobird-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const r = await calicoctl({ env: { ...plugin.env, CALICO_BIRD_DIR: dir } }, ['node', 'status']);
  t.not(r.code, 0);
  t.regex(r.stderr, /BIRD is not running on this host, or does not answer on .*bird\.ctl/);
});
