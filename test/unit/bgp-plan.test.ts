import test from 'ava';
import { type BgpPlanInput, planBgp } from '../../bgp/bgp-plan';

const timers = { keepaliveSeconds: 2, holdSeconds: 6, connectRetrySeconds: 1 };
const base: BgpPlanInput = {
  node: 'h1',
  nodes: [
    { name: 'h1', ipv4Address: '198.18.1.11/24' },
    { name: 'h2', ipv4Address: '198.18.1.12/24' },
    { name: 'h3', ipv4Address: '198.18.2.11/24' },
    { name: 'h4' },
  ],
  nodeSettings: new Map(),
  globalPeers: [],
  nodePeers: [],
  blocks: [
    { cidr: '198.19.0.0/26', affinity: 'h1' },
    { cidr: '198.19.0.64/26', affinity: 'h2' },
    { cidr: 'fd00::/122', affinity: 'h1' },
  ],
  localAddresses: ['198.19.0.5/32', '198.19.0.70/32', 'fd00::5/128'],
  timers,
};

function input(plan: ReturnType<typeof planBgp>): Extract<ReturnType<typeof planBgp>, { ok: true }>['input'] {
  if (!plan.ok) throw new Error(plan.reason);
  return plan.input;
}

test('defaults: AS 64512, full mesh with every other host that has an address; exports local blocks and borrowed /32s', (t) => {
  const i = input(planBgp(base));
  t.is(i.asNumber, 64512);
  t.deepEqual(i.peers.map((p) => [p.kind, p.address, p.asNumber]), [['mesh', '198.18.1.12', 64512], ['mesh', '198.18.2.11', 64512]]);
  t.deepEqual(i.exports, ['198.19.0.0/26', '198.19.0.70/32']);
});

test('mesh off without reflectors: only explicit peers; node-specific beats global for the same address', (t) => {
  const i = input(planBgp({
    ...base,
    settings: { nodeToNodeMesh: false, asNumber: 64513 },
    globalPeers: [{ address: '198.18.1.1', asNumber: 65000 }, { address: '198.18.1.2', asNumber: 65001 }],
    nodePeers: [{ address: '198.18.1.1', asNumber: 65100 }],
  }));
  t.is(i.asNumber, 64513);
  t.deepEqual(i.peers.map((p) => [p.kind, p.address, p.asNumber]), [['node', '198.18.1.1', 65100], ['global', '198.18.1.2', 65001]]);
});

test('AS override per host, for itself and for how others see it', (t) => {
  const nodeSettings = new Map([['h1', { asNumber: 64601 }], ['h2', { asNumber: 64602 }]]);
  const i = input(planBgp({ ...base, nodeSettings }));
  t.is(i.asNumber, 64601);
  t.like(i.peers[0], { address: '198.18.1.12', asNumber: 64602 });
});

test('route reflector with the mesh off: the reflector peers with all, clients flagged; a client peers with reflectors only', (t) => {
  const nodeSettings = new Map([['h2', { routeReflectorClusterId: '1.0.0.1' }]]);
  const settings = { nodeToNodeMesh: false };
  const rr = input(planBgp({ ...base, node: 'h2', settings, nodeSettings }));
  t.is(rr.routeReflectorClusterId, '1.0.0.1');
  t.deepEqual(rr.peers.map((p) => [p.kind, p.address, p.rrClient === true]), [['rr', '198.18.1.11', true], ['rr', '198.18.2.11', true]]);
  const client = input(planBgp({ ...base, settings, nodeSettings }));
  t.is(client.routeReflectorClusterId, undefined);
  t.deepEqual(client.peers.map((p) => [p.kind, p.address, p.rrClient === true]), [['rr', '198.18.1.12', false]]);
});

test('invalid peer records are refused one by one, the rest still planned', (t) => {
  const plan = planBgp({
    ...base,
    globalPeers: [
      { address: '198.18.1.1"; }', asNumber: 65000 },
      { address: '198.18.1.2', asNumber: 0 },
      { address: '198.18.1.3', asNumber: 65000 },
    ],
    nodeSettings: new Map([['h2', { asNumber: 99_999_999_999 }]]),
  });
  const i = input(plan);
  t.is(plan.refused.length, 3, plan.refused.join('\n'));
  t.deepEqual(i.peers.map((p) => p.address), ['198.18.1.3', '198.18.2.11']);
});

test('not registered (removed for good) or without an IPv4 address: no configuration, and why', (t) => {
  const gone = planBgp({ ...base, node: 'h9' });
  t.false(gone.ok);
  t.regex(gone.ok ? '' : gone.reason, /not registered/);
  const noAddress = planBgp({ ...base, node: 'h4' });
  t.regex(noAddress.ok ? '' : noAddress.reason, /no IPv4 address/);
  const badAs = planBgp({ ...base, settings: { asNumber: 0 } });
  t.regex(badAs.ok ? '' : badAs.reason, /AS number/);
});
