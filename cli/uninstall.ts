// `calicoctl uninstall [--force]`: removes from this host every chain, ipset, route and interface
// the plugin made (dataplane/uninstall.ts), with the configuration the daemon reads. It refuses
// while the daemon runs (it would put everything back at once; --force does not change that) and,
// without --force, while this host has endpoint records (containers would lose their network) or
// when the datastore cannot be asked. --force cleans the kernel without the datastore. It stops
// this host's BIRD (BGP mode), which the daemon leaves running across its restarts. The
// datastore itself is left alone: `calicoctl node remove` forgets a host that is gone for good.
import { join } from 'node:path';
import { stringify } from 'yaml';
import type { Config } from '../config/config';
import type { Datastore } from '../datastore/datastore';
import { Keys } from '../datastore/keys';
import { openDatastore, storeSocketPath } from '../datastore/open-datastore';
import { socketAnswers } from '../datastore/store-socket';
import { HostCleanup, isEmptyHostState, type HostState } from '../dataplane/uninstall';
import type { NetnsOption } from '../dataplane/veth';
import { errorMessage, InvalidRequestError } from '../lib/errors';
import { birdPaths, stopBird } from '../bgp/bird-supervisor';
import type { CliIo } from './context';
import type { OutputFormat } from './output';

const CONNECT_TIMEOUT_MS = 1_000;
const DATASTORE_TIMEOUT_MS = 5_000;

export interface UninstallOptions extends NetnsOption {
  readonly force: boolean;
  readonly format: OutputFormat;
}

/** The daemon's sockets: plugin socket(s) and, with the embedded store, the store socket. */
export function daemonSockets(config: Config): string[] {
  const sockets = new Set([join(config.pluginDir, `${config.networkDriverName}.sock`)]);
  if (config.sockets === 'split') sockets.add(join(config.pluginDir, `${config.ipamDriverName}.sock`));
  if (config.etcd === undefined) sockets.add(storeSocketPath(config.dataDir));
  return [...sockets];
}

async function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms / 1000}s`)), ms);
  });
  try {
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** IDs of this host's endpoint records. */
async function localEndpoints(config: Config): Promise<string[]> {
  const opening = openDatastore({ ...(config.etcd !== undefined && { etcd: config.etcd }), dataDir: config.dataDir, mode: 'client' });
  let store: Datastore | undefined;
  try {
    store = await withTimeout(opening, DATASTORE_TIMEOUT_MS, 'open the datastore');
    const prefix = new Keys(config.datastorePrefix).endpointsPrefix(config.nodeName);
    const { items } = await withTimeout(store.list(prefix), DATASTORE_TIMEOUT_MS, 'list endpoints');
    return items.map((kv) => kv.key.slice(prefix.length));
  } finally {
    // A store that opened after the timeout is closed too.
    if (store !== undefined) await store.close().catch(() => undefined);
    else void opening.then((s) => s.close(), () => undefined);
  }
}

export async function uninstall(config: Config, opts: UninstallOptions, io: CliIo): Promise<void> {
  const running: string[] = [];
  for (const socket of daemonSockets(config)) if (await socketAnswers(socket, CONNECT_TIMEOUT_MS)) running.push(socket); // a socket that hangs counts as a daemon: the safe answer
  if (running.length > 0) {
    throw new InvalidRequestError(
      `the daemon is running (${running.join(', ')} answers): stop it first (systemctl stop calico-libnetwork); ` +
        'a running daemon would put everything back, so --force does not override this',
    );
  }
  const notes: string[] = [];
  let endpoints: string[] | undefined;
  try {
    endpoints = await localEndpoints(config);
  } catch (err) {
    if (!opts.force) {
      throw new InvalidRequestError(`cannot tell whether host ${config.nodeName} still has endpoints (${errorMessage(err)}); --force removes the kernel state without asking the datastore`);
    }
    notes.push(`datastore not consulted (${errorMessage(err)}); --force: cleaning the kernel only`);
  }
  if (endpoints !== undefined && endpoints.length > 0) {
    const list = endpoints.map((e) => e.slice(0, 12)).join(', ');
    if (!opts.force) {
      throw new InvalidRequestError(
        `host ${config.nodeName} still has ${endpoints.length} endpoint(s): ${list}; remove their containers first, or --force (their containers lose their network)`,
      );
    }
    notes.push(`--force: ignoring ${endpoints.length} endpoint record(s) of host ${config.nodeName}: ${list} (the records stay in the datastore)`);
  }
  const cleanup = new HostCleanup({
    chainPrefix: config.iptablesChainPrefix,
    ifPrefix: config.hostIfPrefix,
    routeProtocol: config.routeProtocol,
    ...(opts.netns !== undefined && { netns: opts.netns }),
  });
  // BIRD outlives the daemon (bgp/bird-supervisor.ts); uninstalling is taking the host out, so its
  // routes are withdrawn from every peer now (BIRD also removes the routes it wrote).
  if (opts.netns === undefined && (await stopBird(birdPaths(config.birdDir)))) notes.push('stopped BIRD: this host\'s BGP routes are withdrawn');
  const removed = await cleanup.removeAll();
  io.out(renderRemoved(removed, notes, opts.format));
}

function renderRemoved(removed: HostState, notes: string[], format: OutputFormat): string {
  if (format === 'json') return JSON.stringify({ removed, notes }, null, 2);
  if (format === 'yaml') return stringify({ removed, notes }).trimEnd();
  const lines = [...notes.map((n) => `note: ${n}`)];
  for (const c of removed.chains) lines.push(`removed chain ${c}`);
  for (const s of removed.sets) lines.push(`removed ipset ${s}`);
  for (const r of removed.routes) lines.push(`removed route ${r}`);
  for (const i of removed.interfaces) lines.push(`removed interface ${i}`);
  if (isEmptyHostState(removed)) lines.push('nothing of ours on this host');
  return lines.join('\n');
}
