// Liveness, readiness and metrics over HTTP on a local address (CALICO_HEALTH_LISTEN).
//
//   GET /liveness   200 while the process serves its plugin sockets, else 503
//   GET /readiness  200 when every check passes (datastore reachable, agent in sync, Docker
//                   reachable for labels); else 503. Both answer JSON naming each check, with why
//                   it fails.
//   GET /metrics    Prometheus text format
//
// composeReadiness and runCheck are pure (or nearly) so the rules are unit-tested.
import { createServer, type Server } from 'node:http';
import type { SyncStatus } from '../agent/agent';
import type { ListenAddress } from '../config/health-listen';
import { errorMessage } from '../lib/errors';

export interface CheckResult {
  readonly name: string;
  readonly ok: boolean;
  /** Why it fails (absent when ok). */
  readonly reason?: string;
}

export interface HealthAnswer {
  readonly status: 200 | 503;
  readonly body: { readonly status: 'ok' | 'failing'; readonly checks: Record<string, { ok: boolean; reason?: string }>; readonly failing: string[] };
}

/** 200 when every check passes; otherwise 503 naming each failing check and why. */
export function composeReadiness(results: readonly CheckResult[]): HealthAnswer {
  const checks: Record<string, { ok: boolean; reason?: string }> = {};
  for (const r of results) checks[r.name] = r.ok ? { ok: true } : { ok: false, reason: r.reason ?? 'failed' };
  const failing = results.filter((r) => !r.ok).map((r) => r.name);
  return { status: failing.length === 0 ? 200 : 503, body: { status: failing.length === 0 ? 'ok' : 'failing', checks, failing } };
}

/** The agent is ready once its first sync is done and no failed apply or resync is pending. */
export function agentCheck(status: SyncStatus): CheckResult {
  if (!status.synced) return { name: 'agent', ok: false, reason: 'first sync with the datastore not done yet' };
  if (status.failure !== undefined) return { name: 'agent', ok: false, reason: `not in sync: ${status.failure}` };
  return { name: 'agent', ok: true };
}

/** Runs one probe with a deadline: it passes when the promise resolves in time. */
export async function runCheck(name: string, probe: () => Promise<void>, timeoutMs: number, describe: (reason: string) => string = (r) => r): Promise<CheckResult> {
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      probe(),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`no answer within ${timeoutMs}ms`)), timeoutMs);
      }),
    ]);
    return { name, ok: true };
  } catch (err) {
    return { name, ok: false, reason: describe(errorMessage(err)) };
  } finally {
    clearTimeout(timer);
  }
}

export interface HealthSources {
  /** True while every plugin socket accepts requests. */
  live(): boolean;
  readiness(): Promise<readonly CheckResult[]>;
  metrics(): Promise<{ contentType: string; body: string }>;
}

export interface HealthServer {
  readonly address: string;
  close(): Promise<void>;
}

export async function startHealthServer(listen: ListenAddress, sources: HealthSources, onError: (err: unknown) => void): Promise<HealthServer> {
  const server: Server = createServer((req, res) => {
    const json = (answer: HealthAnswer): void => {
      res.writeHead(answer.status, { 'Content-Type': 'application/json' });
      res.end(`${JSON.stringify(answer.body)}\n`);
    };
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { Allow: 'GET, HEAD' }).end();
      return;
    }
    const answer = async (): Promise<void> => {
      switch (path) {
        case '/liveness':
          json(composeReadiness([sources.live() ? { name: 'sockets', ok: true } : { name: 'sockets', ok: false, reason: 'the plugin sockets are not serving' }]));
          return;
        case '/readiness':
          json(composeReadiness(await sources.readiness()));
          return;
        case '/metrics': {
          const m = await sources.metrics();
          res.writeHead(200, { 'Content-Type': m.contentType });
          res.end(m.body);
          return;
        }
        default:
          res.writeHead(404, { 'Content-Type': 'text/plain' }).end('not found: try /liveness, /readiness or /metrics\n');
      }
    };
    answer().catch((err: unknown) => {
      onError(err);
      if (!res.headersSent) res.writeHead(500, { 'Content-Type': 'text/plain' });
      res.end(`${errorMessage(err)}\n`);
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(listen.port, listen.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  server.on('error', onError);
  const host = listen.host.includes(':') ? `[${listen.host}]` : listen.host;
  return {
    address: `${host}:${listen.port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
