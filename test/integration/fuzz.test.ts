// The fuzzer (scripts/fuzz-plugin.ts, 10,000 requests) in small, with fixed seeds: the real
// daemon started by the harness (embedded store) gets 1,000 fuzzed requests on its two sockets and
// 300 on the one socket of a managed plugin's mode. No crash, no hang, errors under the right key
// with a message, refused requests change nothing, and nothing is left once the run's work is
// undone.
import test from 'ava';
import { fuzzReport } from '../../scripts/fuzz-plugin';
import { fuzzHarnessPlugin } from '../harness/fuzz';

const EMPTY = { endpoints: [], allocations: [], networks: [], profiles: [], veths: [], routes: [], chains: [], sets: [], repairs: [] };

for (const [label, single, requests, seed] of [['two sockets', false, 1000, 20261130], ['one socket', true, 300, 20261201]] as const) {
  test(`${requests} fuzzed requests on ${label} (seed ${seed}): no crash, no hang, right error keys, nothing leaked`, async (t) => {
    t.timeout(120_000);
    const r = await fuzzHarnessPlugin({ requests, seed, single });
    t.log(fuzzReport(label, seed, r).join('\n'));
    t.deepEqual(r.result.crashesOrHangs, []);
    t.deepEqual(r.result.violations, []);
    t.deepEqual(r.result.cleanupProblems, []);
    t.deepEqual(r.errorLines, []);
    t.is(r.exitCode, 0, 'the daemon stopped cleanly on SIGTERM');
    t.deepEqual(r.left, EMPTY);
    // The run did reach past the decoders: it made (and undid) networks, endpoints and addresses.
    t.true(r.result.state.networks.size > 0 && r.result.state.endpoints.size > 0 && r.result.state.addresses.size > 0, JSON.stringify(r.result.acceptedBy));
    t.is(r.result.sent, requests);
  });
}
