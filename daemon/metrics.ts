// The daemon's Prometheus metrics (prom-client), named in Felix's style with the prefix
// `calico_libnetwork_`. Lower layers only call plain observers (RequestObserver, SyncObserver);
// this registry turns their calls into counters and histograms. Gauges of datastore state (local
// endpoints, IPAM) are sampled when scraped, so they cannot drift from the datastore.
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { SyncObserver } from '../agent/agent';
import type { ApplyStats } from '../dataplane/policy-dataplane';
import type { RequestObserver } from '../protocol/plugin-server';

export const METRIC_PREFIX = 'calico_libnetwork_';

/** This host's share of the datastore, read at scrape time. */
export interface HostSample {
  readonly activeEndpoints: number;
  readonly endpointsNotReady: number;
  readonly ipamBlocks: number;
  readonly ipamAddressesInUse: number;
}

/** Plugin methods answer in milliseconds; DeleteEndpoint waits on the kernel (tens of ms). */
const REQUEST_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
/** A full policy resync on a big host takes about a second. */
const APPLY_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

export class DaemonMetrics implements RequestObserver, SyncObserver {
  readonly registry = new Registry();
  private readonly requests: Counter<'method' | 'result'>;
  private readonly requestSeconds: Histogram<'method'>;
  private readonly applySeconds: Histogram<'manager'>;
  private readonly applyFailures: Counter<'manager'>;
  private readonly resyncFailures: Counter;
  private readonly datastoreErrors: Counter<'operation'>;
  private readonly rules: Gauge;
  private readonly chains: Gauge;
  private readonly sets: Gauge;

  constructor(sample: () => Promise<HostSample>, onSampleError: (err: unknown) => void) {
    const registers = [this.registry];
    const p = METRIC_PREFIX;
    this.requests = new Counter({ name: `${p}requests_total`, help: 'Plugin requests answered, by method (NetworkDriver.Join, IpamDriver.RequestAddress, ...) and result (ok, error).', labelNames: ['method', 'result'], registers });
    this.requestSeconds = new Histogram({ name: `${p}request_seconds`, help: 'Time to answer a plugin request, by method.', labelNames: ['method'], buckets: REQUEST_BUCKETS, registers });
    this.applySeconds = new Histogram({ name: `${p}dataplane_apply_time_seconds`, help: 'Time one agent manager (policy, routes, sandboxes) took to bring the kernel in line.', labelNames: ['manager'], buckets: APPLY_BUCKETS, registers });
    this.applyFailures = new Counter({ name: `${p}dataplane_failures_total`, help: 'Failed applies of an agent manager (each is followed by a full resync).', labelNames: ['manager'], registers });
    this.resyncFailures = new Counter({ name: `${p}resync_failures_total`, help: 'Full datastore listings by the agent that failed (start or resync).', registers });
    this.datastoreErrors = new Counter({ name: `${p}datastore_errors_total`, help: 'Datastore operations that failed (unreachable, timed out, refused), by operation.', labelNames: ['operation'], registers });
    this.rules = new Gauge({ name: `${p}iptables_rules`, help: 'iptables and ip6tables rules of ours programmed (all tables, top-level jumps included).', registers });
    this.chains = new Gauge({ name: `${p}iptables_chains`, help: 'iptables and ip6tables chains of ours programmed.', registers });
    this.sets = new Gauge({ name: `${p}ipsets`, help: 'ipsets of ours programmed.', registers });
    // Sampled on scrape: one datastore read serves the four gauges.
    let pending: Promise<HostSample | undefined> | undefined;
    const sampled = (): Promise<HostSample | undefined> => {
      pending ??= sample().then(
        (s) => s,
        (err: unknown) => {
          onSampleError(err);
          return undefined;
        },
      ).finally(() => {
        // One scrape asks four times; the next scrape reads again.
        setImmediate(() => (pending = undefined));
      });
      return pending;
    };
    const sampledGauge = (name: string, help: string, pick: (s: HostSample) => number): void => {
      new Gauge({
        name: `${p}${name}`,
        help,
        registers,
        async collect() {
          const s = await sampled();
          if (s !== undefined) this.set(pick(s));
        },
      });
    };
    sampledGauge('active_local_endpoints', 'Endpoints of containers on this host (recorded in the datastore).', (s) => s.activeEndpoints);
    sampledGauge('endpoints_not_ready', 'Local endpoints whose labels (or network name) are not yet known from Docker: isolated until they are.', (s) => s.endpointsNotReady);
    sampledGauge('ipam_blocks', 'IPAM blocks affine to this host.', (s) => s.ipamBlocks);
    sampledGauge('ipam_allocations_in_use', 'Addresses allocated to this host (in any block).', (s) => s.ipamAddressesInUse);
  }

  onRequest(method: string, result: 'ok' | 'error', seconds: number): void {
    this.requests.inc({ method, result });
    this.requestSeconds.observe({ method }, seconds);
  }

  onApply(manager: string, seconds: number, ok: boolean): void {
    this.applySeconds.observe({ manager }, seconds);
    if (!ok) this.applyFailures.inc({ manager });
  }

  onSyncFailed(): void {
    this.resyncFailures.inc();
  }

  onDatastoreError(operation: string): void {
    this.datastoreErrors.inc({ operation });
  }

  onPolicyApplied(stats: Pick<ApplyStats, 'programmed'>): void {
    this.rules.set(stats.programmed.rules);
    this.chains.set(stats.programmed.chains);
    this.sets.set(stats.programmed.sets);
  }

  /** Prometheus text exposition format. */
  async render(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}
