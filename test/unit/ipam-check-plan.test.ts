import test from 'ava';
import { assignSpecific, newBlock, type Block, type Owner } from '../../ipam/block';
import type { Endpoint } from '../../model/endpoint';
import { planIpamCheck, recheck, type CheckInput, type Finding } from '../../workload/ipam-check-plan';

const NOW = Date.parse('2026-01-01T12:00:00Z');
const GRACE = 60_000;
const ago = (ms: number): string => new Date(NOW - ms).toISOString();
const OLD = ago(10 * 60_000);
const EP1 = 'a'.repeat(64);
const EP2 = 'b'.repeat(64);

function record(id: string, ip: string, node = 'node-a', createdAt = OLD): Endpoint {
  return {
    id, networkId: 'net1', node, hostInterface: `cali${id.slice(0, 11)}`, ipv4: [`${ip}/32`], ipv6: [], mac: '', profiles: [],
    labels: {}, ready: true, profilesPending: false, gatewayIndex: 0, createdAt,
  };
}

const docker = (over: Partial<Owner> = {}): Owner => ({ node: 'node-a', handle: 'docker:CalicoPoolIPv4', kind: 'container', allocatedAt: OLD, ...over });

/** A /29 block with the given addresses allocated. */
function block(cidr: string, affinity: string | null, held: Record<string, Owner>): Block {
  let b = newBlock(cidr, affinity);
  for (const [ip, owner] of Object.entries(held)) {
    const r = assignSpecific(b, ip, owner);
    if (r.status !== 'assigned') throw new Error(`cannot assign ${ip}`);
    b = r.block;
  }
  return b;
}

function input(over: Partial<CheckInput>): CheckInput {
  return {
    now: NOW,
    graceMs: GRACE,
    hosts: new Set(['node-a', 'node-b']),
    blocks: [],
    records: [],
    ownsHandle: (h) => h.startsWith('docker:'),
    claimHandle: () => 'docker:CalicoPoolIPv4',
    ...over,
  };
}

const brief = (fs: Finding[]): string[] => fs.map((f) => `${f.host} ${f.kind} ${f.ip ?? f.block ?? ''} ${f.repair}`);

test('a consistent datastore has no findings', (t) => {
  const findings = planIpamCheck(input({
    blocks: [block('10.0.0.0/29', 'node-a', { '10.0.0.1': docker({ endpointId: EP1 }) })],
    records: [record(EP1, '10.0.0.1')],
  }));
  t.deepEqual(findings, []);
});

test('what each kind of address without endpoint gets, and why', (t) => {
  const findings = planIpamCheck(input({
    blocks: [block('10.0.0.0/29', 'node-a', {
      '10.0.0.1': docker(),
      '10.0.0.2': docker({ allocatedAt: ago(5_000) }),
      '10.0.0.3': docker({ node: '@swarm', handle: 'swarm:CalicoGlobalPoolIPv4' }),
      '10.0.0.4': docker({ kind: 'gateway' }),
      '10.0.0.5': docker({ handle: 'bench-1', kind: 'reserved' }),
      '10.0.0.6': docker({ allocatedAt: undefined }),
      '10.0.0.7': docker({ node: 'node-b', endpointId: EP2 }),
    })],
  }));
  t.deepEqual(brief(findings), [
    '@swarm address-without-endpoint 10.0.0.3 none',
    'node-a address-without-endpoint 10.0.0.1 release',
    'node-a address-without-endpoint 10.0.0.2 none',
    'node-a address-without-endpoint 10.0.0.4 none',
    'node-a address-without-endpoint 10.0.0.5 none',
    'node-a address-without-endpoint 10.0.0.6 none',
    'node-b address-without-endpoint 10.0.0.7 release',
  ]);
  const reason = (ip: string): string => findings.find((f) => f.ip === ip)?.reason ?? '';
  t.regex(reason('10.0.0.1'), /no endpoint was ever recorded/);
  t.regex(reason('10.0.0.2'), /within the grace period/);
  t.regex(reason('10.0.0.3'), /swarm manager/);
  t.regex(reason('10.0.0.4'), /gateway/);
  t.regex(reason('10.0.0.5'), /held by bench-1/);
  t.regex(reason('10.0.0.6'), /no allocation time/);
  t.regex(reason('10.0.0.7'), /has no record on node-b/);
  t.deepEqual(findings.find((f) => f.ip === '10.0.0.1')?.owner, docker());
});

test('an address another host\'s record uses is never released, whoever holds it', (t) => {
  const findings = planIpamCheck(input({
    blocks: [block('10.0.0.0/29', 'node-a', { '10.0.0.1': docker() })],
    records: [record(EP2, '10.0.0.1', 'node-b')],
  }));
  t.deepEqual(findings, []);
});

test('an endpoint without allocation is claimed under the handle Docker releases; a young record is not judged', (t) => {
  const findings = planIpamCheck(input({
    records: [record(EP1, '10.0.0.1'), record(EP2, '10.0.0.2', 'node-a', ago(1_000))],
  }));
  t.deepEqual(brief(findings), ['node-a endpoint-without-allocation 10.0.0.1 claim']);
  t.is(findings[0]?.handle, `docker:CalicoPoolIPv4#${EP1}`, 'the handle Docker releases, naming the endpoint');
  const unknown = planIpamCheck(input({ records: [record(EP1, '10.0.0.1')], claimHandle: () => undefined }));
  t.deepEqual(brief(unknown), ['node-a endpoint-without-allocation 10.0.0.1 none']);
  t.regex(unknown[0]?.reason ?? '', /network's record is gone/);
});

test('duplicates are reported, naming the endpoint the allocation names, and never repaired', (t) => {
  const findings = planIpamCheck(input({
    blocks: [block('10.0.0.0/29', 'node-a', { '10.0.0.1': docker({ endpointId: EP1 }) })],
    records: [record(EP1, '10.0.0.1'), record(EP2, '10.0.0.1', 'node-b')],
  }));
  t.deepEqual(brief(findings), ['node-a duplicate 10.0.0.1 none']);
  t.regex(findings[0]?.reason ?? '', /2 endpoints use it .*the allocation names aaaaaaaaaaaa; remove the other containers/);
});

test('a block affine to a removed host is released only when nothing of that host is in use', (t) => {
  const gone = block('10.0.0.8/29', 'node-gone', { '10.0.0.9': docker({ node: 'node-gone' }) });
  const free = planIpamCheck(input({ blocks: [gone] }));
  t.deepEqual(brief(free), ['node-gone address-without-endpoint 10.0.0.9 release', 'node-gone orphan-block 10.0.0.8/29 release-host']);
  const withRecord = planIpamCheck(input({ blocks: [gone], records: [record(EP1, '10.0.0.9', 'node-gone')] }));
  t.deepEqual(brief(withRecord), ['node-gone orphan-block 10.0.0.8/29 none']);
  t.regex(withRecord[0]?.reason ?? '', /still has 1 endpoint record/);
  const usedElsewhere = planIpamCheck(input({ blocks: [gone], records: [record(EP1, '10.0.0.9', 'node-a')] }));
  t.deepEqual(brief(usedElsewhere), ['node-gone orphan-block 10.0.0.8/29 none']);
  t.regex(usedElsewhere[0]?.reason ?? '', /in use \(10\.0\.0\.9\)/);
  t.deepEqual(planIpamCheck(input({ blocks: [block('10.0.0.8/29', '@swarm', {})] })), [], 'the swarm manager is not a host');
});

test('recheck: repairs only what is still found, unchanged, and says why it skips the rest', (t) => {
  const reported: Finding = { kind: 'address-without-endpoint', host: 'node-a', ip: '10.0.0.1', owner: docker(), repair: 'release', reason: 'x' };
  t.deepEqual(recheck(reported, [reported], () => []), { action: 'repair', finding: reported });
  t.like(recheck(reported, [], () => [{ id: EP1, node: 'node-b' }]), { action: 'skip', reason: `now in use by endpoint ${EP1.slice(0, 12)} on node-b` });
  t.like(recheck(reported, [], () => []), { action: 'skip', reason: 'no longer found (fixed or changed since the report)' });
  const handedOutAgain = { ...reported, owner: docker({ allocatedAt: ago(1) }) };
  t.regex((recheck(reported, [handedOutAgain], () => []) as { reason: string }).reason, /allocation changed since the report/);
  const pendingNow = { ...reported, repair: 'none' as const, reason: 'within the grace period' };
  t.regex((recheck(reported, [pendingNow], () => []) as { reason: string }).reason, /changed since the report: within the grace period/);
  t.regex((recheck(pendingNow, [pendingNow], () => []) as { reason: string }).reason, /^not repairable: /);
});
