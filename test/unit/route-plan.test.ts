import test from 'ava';
import { type PlanInput, planRoutes } from '../../agent/route-plan';

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
