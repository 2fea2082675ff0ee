// calicoctl: the operator CLI. It reaches the same datastore as the daemon (etcd when
// ETCD_ENDPOINTS is set, otherwise the daemon's embedded store through its socket) and works on
// the same model through the same modules, so it can never disagree with the plugin.
import { parseArgs } from 'node:util';
import { parseConfig } from '../config/config';
import { Keys } from '../datastore/keys';
import { openDatastore } from '../datastore/open-datastore';
import { Allocator } from '../ipam/allocator';
import { InvalidRequestError } from '../lib/errors';
import type { CliIo, Handler } from './context';
import { ipamCheckCommands } from './ipam-check-commands';
import { bgpCommands } from './bgp-commands';
import { ipamCommands } from './ipam-commands';
import { nodeCommands } from './node-commands';
import { parseFormat } from './output';
import { policyCommands } from './policy-commands';
import { uninstall } from './uninstall';

export type { CliIo } from './context';

export const USAGE = `Usage: calicoctl <command> [options]

Commands:
  pool add <cidr> [--disabled] [--nat-outgoing] [--block-size N] [--vxlan-mode Always|CrossSubnet|Never]
                                                                   add an IP pool
  pool list                                                          list IP pools and their use
  pool remove <cidr>                                                 remove an unused IP pool
  endpoint list                                                      list workload endpoints
  ipam show                                                          show blocks, owners, used/free
  ipam release-swarm                                                 free the addresses a swarm left for good
                                                                     still holds (none may be in use)
  ipam check                                                         per host: addresses without endpoint, endpoints
                                                                     without allocation, duplicates, blocks of
                                                                     removed hosts (-o json: a report for release)
  ipam release --ip <address> | --from-report <file>                 repair what check finds (never an address in
                                                                     use; each entry checked again first)
  node list                                                          hosts: addresses, blocks, endpoints, alive
  node remove <name> [--force]                                       forget a host that is gone: its blocks,
                                                                     addresses and (--force) endpoint records
  node set <name> [--as <asn>|default] [--route-reflector <cluster-id>|none]
                                                                     a host's BGP AS and route reflector role
  node status                                                        this host's BGP sessions (BIRD's view)
  bgp peer add <address> --as <asn> [--node <name>]                  peer every host (or one) with a router
  bgp peer remove <address> [--node <name>]                          remove a peer
  bgp peer list                                                      list BGP peers
  bgp config set [--mesh on|off] [--as <asn>]                        node-to-node mesh, default AS (64512)
  bgp config show                                                    show them
  apply -f <file.yaml|file.json|->                                   create or replace profiles
  get profile [name]                                                 show profiles
  delete profile <name>                                              delete a profile
  policy explain <from> <to> [--protocol P] [--port N]               would traffic be allowed, and why
                 [--src-port N] [--icmp-type T] [--icmp-code C]      (<from>/<to>: endpoint ID or IP)
  uninstall [--force]                                                remove every chain, ipset, route and interface
                                                                     of ours from this host (the daemon stopped;
                                                                     --force: even with endpoints, or no datastore)

Options:
  -o, --output table|json|yaml   output format (default table)
  -h, --help                     show this help

The datastore is etcd when ETCD_ENDPOINTS is set, else the embedded store in CALICO_DATA_DIR.`;

const commands: Record<string, Handler> = { ...ipamCommands, ...ipamCheckCommands, ...policyCommands, ...nodeCommands, ...bgpCommands };

function findCommand(positionals: string[]): { handler: Handler; args: string[] } {
  for (const words of [3, 2, 1]) {
    const handler = commands[positionals.slice(0, words).join(' ')];
    if (handler !== undefined && positionals.length >= words) return { handler, args: positionals.slice(words) };
  }
  throw new InvalidRequestError(`unknown command '${positionals.join(' ')}'\n\n${USAGE}`);
}

/** Runs one command; returns the exit code. Errors are thrown for the caller to print. */
export async function runCalicoctl(argv: string[], env: NodeJS.ProcessEnv, io: CliIo): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      output: { type: 'string', short: 'o' },
      filename: { type: 'string', short: 'f' },
      disabled: { type: 'boolean', default: false },
      'nat-outgoing': { type: 'boolean', default: false },
      force: { type: 'boolean', default: false },
      'block-size': { type: 'string' },
      'vxlan-mode': { type: 'string' },
      protocol: { type: 'string' },
      port: { type: 'string' },
      'src-port': { type: 'string' },
      'icmp-type': { type: 'string' },
      'icmp-code': { type: 'string' },
      ip: { type: 'string' },
      'from-report': { type: 'string' },
      as: { type: 'string' },
      node: { type: 'string' },
      mesh: { type: 'string' },
      'route-reflector': { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help || positionals.length === 0) {
    io.out(USAGE);
    return values.help ? 0 : 2;
  }
  const format = parseFormat(values.output);
  // Before any datastore is opened: a forced uninstall works without one.
  if (positionals[0] === 'uninstall') {
    if (positionals.length !== 1) throw new InvalidRequestError('usage: calicoctl uninstall [--force]');
    await uninstall(parseConfig(env), { force: values.force ?? false, format }, io);
    return 0;
  }
  const { handler, args } = findCommand(positionals);
  const config = parseConfig(env);
  const store = await openDatastore({ ...(config.etcd !== undefined && { etcd: config.etcd }), dataDir: config.dataDir, mode: 'client' });
  try {
    const keys = new Keys(config.datastorePrefix);
    const allocator = new Allocator({ store, keys, node: config.nodeName });
    const flags = {
      disabled: values.disabled ?? false,
      natOutgoing: values['nat-outgoing'] ?? false,
      force: values.force ?? false,
      ...(values['block-size'] !== undefined && { blockSize: values['block-size'] }),
      ...(values['vxlan-mode'] !== undefined && { vxlanMode: values['vxlan-mode'] }),
      ...(values.filename !== undefined && { filename: values.filename }),
      ...(values.protocol !== undefined && { protocol: values.protocol }),
      ...(values.port !== undefined && { port: values.port }),
      ...(values['src-port'] !== undefined && { srcPort: values['src-port'] }),
      ...(values['icmp-type'] !== undefined && { icmpType: values['icmp-type'] }),
      ...(values['icmp-code'] !== undefined && { icmpCode: values['icmp-code'] }),
      ...(values.ip !== undefined && { ip: values.ip }),
      ...(values['from-report'] !== undefined && { fromReport: values['from-report'] }),
      ...(values.as !== undefined && { as: values.as }),
      ...(values.node !== undefined && { node: values.node }),
      ...(values.mesh !== undefined && { mesh: values.mesh }),
      ...(values['route-reflector'] !== undefined && { routeReflector: values['route-reflector'] }),
    };
    return (await handler({ store, keys, allocator, format, io, flags, graceMs: config.reconcileGraceMs, birdDir: config.birdDir }, args)) ?? 0;
  } finally {
    await store.close();
  }
}
