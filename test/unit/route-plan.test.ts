import test from 'ava';
import { type PlanInput, type PlanNode, type PlanPool, planRoutes, vxlanMac } from '../../agent/route-plan';

const nodes = [
  { name: 'h1', ipv4Address: '198.18.10.1/24' },
  { name: 'h2', ipv4Address: '198.18.10.2/24', ipv6Address: 'fd00:10::2/64' },
  { name: 'h3', ipv4Address: '198.19.20.3/24' }, // another subnet
  { name: 'h4' }, // no address
];
const blocks = [
  { cidr: '10.0.0.0/26', affinity: 'h1' },
  { cidr: '10.0.0.64/26', affinity: 'h2' },
  { cidr: '10.0.0.128/26', affinity: 'h3' },
  { cidr: '10.0.0.192/26', affinity: 'h4' },
  { cidr: '10.0.1.0/28', affinity: null }, // released: nobody's
];

test("routes for h1: blackhole its block, other hosts' blocks via their address, borrowed /32s", (t) => {
  const input: PlanInput = {
    node: 'h1',
    nodes,
    blocks,
    endpoints: [
      { node: 'h2', addresses: ['10.0.0.65/32'] }, // in h2's own block: the block route covers it
      { node: 'h2', addresses: ['10.0.0.5/32'] }, // borrowed from h1's block
      { node: 'h2', addresses: ['10.0.0.130/32'] }, // borrowed from h3's block
      { node: 'h1', addresses: ['10.0.0.70/32'] }, // local, borrowed: Join's veth route serves it
      { node: 'h3', addresses: ['10.0.1.1/32'] }, // h3 is unreachable without VXLAN
    ],
  };
  t.deepEqual(planRoutes(input), {
    routes: [
      { kind: 'blackhole', dst: '10.0.0.0/26', family: 4 },
      { kind: 'via', dst: '10.0.0.130/32', via: '198.18.10.2', family: 4 },
      { kind: 'via', dst: '10.0.0.5/32', via: '198.18.10.2', family: 4 },
      { kind: 'via', dst: '10.0.0.64/26', via: '198.18.10.2', family: 4 },
    ],
    unreachable: ['h3', 'h4'],
  });
});

test('IPv6 blocks route over the IPv6 addresses; a host without its own address routes nothing out', (t) => {
  const v6 = { node: 'h2', nodes, blocks: [{ cidr: 'fd80::/122', affinity: 'h2' }, { cidr: 'fd80::40/122', affinity: 'h1' }], endpoints: [] };
  t.deepEqual(planRoutes(v6).routes, [{ kind: 'blackhole', dst: 'fd80::/122', family: 6 }]);
  t.deepEqual(planRoutes(v6).unreachable, ['h1'], 'h1 has no IPv6 address');
  const lonely = planRoutes({ node: 'h4', nodes, blocks, endpoints: [] });
  t.deepEqual(lonely.routes, [{ kind: 'blackhole', dst: '10.0.0.192/26', family: 4 }]);
  t.deepEqual(lonely.unreachable, ['h1', 'h2', 'h3']);
});

test('a malformed stored value is skipped, not fatal', (t) => {
  const plan = planRoutes({ node: 'h1', nodes, blocks: [{ cidr: 'garbage', affinity: 'h2' }, ...blocks], endpoints: [{ node: 'h2', addresses: ['nope'] }] });
  t.is(plan.routes.length, 2);
});

test('vxlanMac: locally administered unicast, stable per host, distinct between hosts', (t) => {
  const m = vxlanMac('h1');
  t.regex(m, /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/);
  t.is(parseInt(m.slice(0, 2), 16) & 0b11, 0b10, 'locally administered, not multicast');
  t.is(vxlanMac('h1'), m);
  t.not(vxlanMac('h2'), m);
});

test('VXLAN per pool mode: which blocks and borrowed addresses go over the device', (t) => {
  const pool = (vxlanMode: 'Never' | 'CrossSubnet' | 'Always'): PlanPool[] => [{ cidr: '10.0.0.0/16', vxlanMode }];
  const endpoints = [{ node: 'h3', addresses: ['10.0.0.7/32'] }]; // borrowed from h1's block, in use on h3
  const plain2 = { kind: 'via', dst: '10.0.0.64/26', via: '198.18.10.2', family: 4 };
  const vx2 = { kind: 'vxlan', dst: '10.0.0.64/26', via: '198.18.10.2', family: 4 };
  const vx3 = { kind: 'vxlan', dst: '10.0.0.128/26', via: '198.19.20.3', family: 4 };
  const vx3borrowed = { kind: 'vxlan', dst: '10.0.0.7/32', via: '198.19.20.3', family: 4 };
  const cases: Array<{ name: string; pools: PlanPool[] | undefined; routes: object[]; unreachable: string[]; device: boolean }> = [
    { name: 'no pools listed: Never', pools: undefined, routes: [plain2], unreachable: ['h3', 'h4'], device: false },
    { name: 'Never', pools: pool('Never'), routes: [plain2], unreachable: ['h3', 'h4'], device: false },
    { name: 'CrossSubnet: same subnet plain, other subnet VXLAN', pools: pool('CrossSubnet'), routes: [vx3, plain2, vx3borrowed], unreachable: ['h4'], device: true },
    { name: 'Always: every host over VXLAN', pools: pool('Always'), routes: [vx3, vx2, vx3borrowed], unreachable: ['h4'], device: true },
    { name: 'a VXLAN pool elsewhere does not cover these blocks', pools: [{ cidr: '10.9.0.0/16', vxlanMode: 'Always' }], routes: [plain2], unreachable: ['h3', 'h4'], device: true },
    { name: 'a malformed pool is skipped', pools: [{ cidr: 'junk', vxlanMode: 'Always' }, ...pool('CrossSubnet')], routes: [vx3, plain2, vx3borrowed], unreachable: ['h4'], device: true },
  ];
  for (const c of cases) {
    const plan = planRoutes({ node: 'h1', nodes, blocks, endpoints, ...(c.pools !== undefined && { pools: c.pools }) });
    t.deepEqual(plan.routes, [{ kind: 'blackhole', dst: '10.0.0.0/26', family: 4 }, ...c.routes], c.name);
    t.deepEqual(plan.unreachable, c.unreachable, c.name);
    t.is(plan.vxlan !== undefined, c.device, `${c.name}: device`);
  }
});

test('VXLAN device plan: local address, own MAC, every other host with an IPv4 address as a peer', (t) => {
  const pools: PlanPool[] = [{ cidr: '10.0.0.0/16', vxlanMode: 'CrossSubnet' }];
  t.deepEqual(planRoutes({ node: 'h1', nodes, blocks, endpoints: [], pools }).vxlan, {
    local: '198.18.10.1',
    mac: vxlanMac('h1'),
    peers: [
      { node: 'h2', address: '198.18.10.2', mac: vxlanMac('h2') },
      { node: 'h3', address: '198.19.20.3', mac: vxlanMac('h3') },
    ],
  });
  // h3 routes back over its own device: symmetric.
  const back = planRoutes({ node: 'h3', nodes, blocks, endpoints: [], pools });
  t.deepEqual(back.routes.filter((r) => r.kind === 'vxlan').map((r) => [r.dst, r.via]), [['10.0.0.0/26', '198.18.10.1'], ['10.0.0.64/26', '198.18.10.2']]);
  // No device without an own address, nor for a host alone.
  t.is(planRoutes({ node: 'h4', nodes, blocks, endpoints: [], pools }).vxlan, undefined, 'h4 has no address');
  t.is(planRoutes({ node: 'h1', nodes: [nodes[0] as PlanNode], blocks, endpoints: [], pools }).vxlan, undefined, 'alone');
  // IPv6 blocks never go over VXLAN.
  const v6 = planRoutes({ node: 'h2', nodes: [...nodes, { name: 'h5', ipv6Address: 'fd00:20::5/64' }], blocks: [{ cidr: 'fd80::/122', affinity: 'h5' }], endpoints: [], pools: [{ cidr: 'fd80::/64', vxlanMode: 'Always' }] });
  t.deepEqual(v6.routes, []);
  t.deepEqual(v6.unreachable, ['h5']);
});
