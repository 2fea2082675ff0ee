// calicoctl's BGP commands: peers (global or of one host), the mesh and default AS, a host's AS
// and route reflector role, and this host's sessions as its BIRD reports them. Values are
// validated here with the same rules BIRD's configuration is rendered with (bird-config.ts), so a
// bad one is refused before it is stored; the daemon validates again on its side.
import { modifyKey } from '../datastore/cas';
import { NODE_NAME } from '../config/config';
import { BgpNodeSettings, BgpPeerRecord, BgpSettings } from '../bgp/bgp-model';
import { DEFAULT_AS_NUMBER, validAsNumber, validIpv4 } from '../bgp/bird-config';
import { BirdcError, bgpSessions, parseProtocols, peerTypeLabel } from '../bgp/bird-status';
import { birdc } from '../bgp/birdc';
import { birdPaths } from '../bgp/bird-supervisor';
import { InvalidRequestError, NotFoundError } from '../lib/errors';
import { parseStored, serialize } from '../model/codec';
import { decode } from '../lib/validate';
import { exactArgs, type Context, type Handler } from './context';
import { render } from './output';

function asFlag(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  if (!/^\d{1,10}$/.test(value)) throw new InvalidRequestError(`--as must be an AS number from 1 to 4294967295, got '${value}'`);
  return validAsNumber(Number(value), '--as');
}

function nodeName(name: string | undefined): string {
  if (name === undefined || !NODE_NAME.test(name)) throw new InvalidRequestError(`'${name ?? ''}' is not a node name`);
  return name;
}

interface PeerRow {
  readonly scope: string;
  readonly address: string;
  readonly asNumber: number;
}

async function readJson<T>(ctx: Context, key: string, decoder: (v: unknown, p: string) => T): Promise<T | undefined> {
  const kv = await ctx.store.get(key);
  return kv === undefined ? undefined : parseStored(decoder, kv);
}

export const bgpCommands: Record<string, Handler> = {
  async 'bgp peer add'(ctx, args) {
    exactArgs(args, 1, 'bgp peer add <address> --as <asn> [--node <name>]');
    const address = validIpv4(args[0], 'peer address');
    const asNumber = asFlag(ctx.flags.as);
    if (asNumber === undefined) throw new InvalidRequestError('usage: calicoctl bgp peer add <address> --as <asn> [--node <name>]');
    const node = ctx.flags.node === undefined ? undefined : nodeName(ctx.flags.node);
    const key = node === undefined ? ctx.keys.bgpGlobalPeer(address) : ctx.keys.bgpNodePeer(node, address);
    const value = serialize(decode(BgpPeerRecord, { address, asNumber }));
    const outcome = await modifyKey(ctx.store, key, `add BGP peer ${address}`, () => value);
    ctx.io.out(`${outcome === 'created' ? 'added' : 'updated'} ${node === undefined ? 'global' : `node-specific (${node})`} BGP peer ${address} AS ${asNumber}`);
  },

  async 'bgp peer remove'(ctx, args) {
    exactArgs(args, 1, 'bgp peer remove <address> [--node <name>]');
    const address = validIpv4(args[0], 'peer address');
    const node = ctx.flags.node === undefined ? undefined : nodeName(ctx.flags.node);
    const key = node === undefined ? ctx.keys.bgpGlobalPeer(address) : ctx.keys.bgpNodePeer(node, address);
    if ((await ctx.store.get(key)) === undefined) throw new NotFoundError(`no ${node === undefined ? 'global' : `node-specific (${node})`} BGP peer ${address}`);
    await ctx.store.delete(key);
    ctx.io.out(`removed BGP peer ${address}`);
  },

  async 'bgp peer list'(ctx, args) {
    exactArgs(args, 0, 'bgp peer list');
    const [globals, nodes] = await Promise.all([ctx.store.list(ctx.keys.bgpGlobalPeersPrefix()), ctx.store.list(ctx.keys.bgpNodePeersPrefix())]);
    const rows: PeerRow[] = [];
    for (const kv of globals.items) {
      const p = parseStored(BgpPeerRecord, kv);
      rows.push({ scope: 'global', address: p.address, asNumber: p.asNumber });
    }
    for (const kv of nodes.items) {
      const p = parseStored(BgpPeerRecord, kv);
      rows.push({ scope: `node ${kv.key.slice(ctx.keys.bgpNodePeersPrefix().length).split('/')[0] ?? ''}`, address: p.address, asNumber: p.asNumber });
    }
    ctx.io.out(render(ctx.format, [
      { header: 'SCOPE', value: (r: PeerRow) => r.scope },
      { header: 'PEER ADDRESS', value: (r) => r.address },
      { header: 'AS', value: (r) => String(r.asNumber) },
    ], rows));
  },

  async 'bgp config set'(ctx, args) {
    exactArgs(args, 0, 'bgp config set [--mesh on|off] [--as <asn>]');
    const mesh = ctx.flags.mesh === undefined ? undefined : ctx.flags.mesh === 'on' ? true : ctx.flags.mesh === 'off' ? false : undefined;
    if (ctx.flags.mesh !== undefined && mesh === undefined) throw new InvalidRequestError(`--mesh must be on or off, got '${ctx.flags.mesh}'`);
    const asNumber = asFlag(ctx.flags.as);
    if (mesh === undefined && asNumber === undefined) throw new InvalidRequestError('usage: calicoctl bgp config set [--mesh on|off] [--as <asn>]');
    let result: BgpSettings = {};
    await modifyKey(ctx.store, ctx.keys.bgpConfig(), 'set BGP configuration', (current) => {
      const old = current === undefined ? {} : parseStored(BgpSettings, current);
      result = { ...old, ...(mesh !== undefined && { nodeToNodeMesh: mesh }), ...(asNumber !== undefined && { asNumber }) };
      return serialize(result);
    });
    ctx.io.out(`node-to-node mesh ${result.nodeToNodeMesh === false ? 'off' : 'on'}, default AS ${result.asNumber ?? DEFAULT_AS_NUMBER}`);
  },

  async 'bgp config show'(ctx, args) {
    exactArgs(args, 0, 'bgp config show');
    const s = (await readJson(ctx, ctx.keys.bgpConfig(), BgpSettings)) ?? {};
    const row = { nodeToNodeMesh: s.nodeToNodeMesh ?? true, asNumber: s.asNumber ?? DEFAULT_AS_NUMBER };
    ctx.io.out(ctx.format === 'table' ? `node-to-node mesh ${row.nodeToNodeMesh ? 'on' : 'off'}, default AS ${row.asNumber}` : render(ctx.format, [], [row]));
  },

  async 'node set'(ctx, args) {
    exactArgs(args, 1, 'node set <name> [--as <asn>|default] [--route-reflector <cluster-id>|none]');
    const name = nodeName(args[0]);
    const rr = ctx.flags.routeReflector;
    if (ctx.flags.as === undefined && rr === undefined) throw new InvalidRequestError('usage: calicoctl node set <name> [--as <asn>|default] [--route-reflector <cluster-id>|none]');
    const asNumber = ctx.flags.as === 'default' ? undefined : asFlag(ctx.flags.as);
    const clusterId = rr === undefined || rr === 'none' ? undefined : validIpv4(rr, '--route-reflector cluster ID');
    let result: BgpNodeSettings = {};
    await modifyKey(ctx.store, ctx.keys.bgpNode(name), `set BGP settings of ${name}`, (current) => {
      const old: BgpNodeSettings = current === undefined ? {} : parseStored(BgpNodeSettings, current);
      const next: Record<string, unknown> = { ...old };
      if (ctx.flags.as !== undefined) next['asNumber'] = asNumber;
      if (rr !== undefined) next['routeReflectorClusterId'] = clusterId;
      result = decode(BgpNodeSettings, JSON.parse(JSON.stringify(next)));
      return serialize(result);
    });
    ctx.io.out(`node ${name}: AS ${result.asNumber ?? 'default'}, route reflector ${result.routeReflectorClusterId ?? 'no'}`);
  },

  async 'node status'(ctx, args) {
    exactArgs(args, 0, 'node status');
    const socket = birdPaths(ctx.birdDir).socket;
    const r = await birdc(socket, ['show', 'protocols']);
    let sessions;
    try {
      sessions = bgpSessions(parseProtocols(r.output));
    } catch (err) {
      if (err instanceof BirdcError) throw new InvalidRequestError(`BIRD is not running on this host, or does not answer on ${socket} (CALICO_NETWORKING_BACKEND=bird?): ${r.output.trim() || err.message}`);
      throw err;
    }
    const rows = sessions.map((s) => ({ peerAddress: s.peerAddress, peerType: peerTypeLabel(s.kind), state: s.state, since: s.since, info: s.info }));
    ctx.io.out(render(ctx.format, [
      { header: 'PEER ADDRESS', value: (x: (typeof rows)[number]) => x.peerAddress },
      { header: 'PEER TYPE', value: (x) => x.peerType },
      { header: 'STATE', value: (x) => x.state },
      { header: 'SINCE', value: (x) => x.since },
      { header: 'INFO', value: (x) => x.info },
    ], rows));
  },
};
