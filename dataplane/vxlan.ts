// This host's VXLAN device (default `vxlan.calico`): created with a configured VNI and UDP port,
// no multicast group and no learning, so the kernel only knows other hosts from the static
// entries written here: a neighbour entry (their address → their device's MAC) and a forwarding
// entry (their MAC → their address) per peer. Entries on the device that are not desired are
// removed; nothing outside the device is touched. What was written is remembered, so an apply with
// nothing new runs no process; a resync reads the kernel back first.
import { parseIp, formatIp } from '../ipam/cidr';
import { DataplaneError, errorMessage } from '../lib/errors';
import { assertIfName } from '../lib/interface-names';
import { CommandError, run } from './exec';
import { assertNetnsName, assertUnicastMac } from './names';
import type { NetnsOption } from './veth';

/** This host's VXLAN device (interface autodetection skips vxlan*); the daemon creates it and
 * `calicoctl uninstall` removes it. */
export const VXLAN_DEVICE = 'vxlan.calico';

export interface VxlanPeerEntry {
  /** The peer's IPv4 address between hosts. */
  readonly address: string;
  readonly mac: string;
}

export interface KernelVxlan {
  /** This host's IPv4 address between hosts: the outer source. */
  readonly local: string;
  readonly mac: string;
  readonly peers: readonly VxlanPeerEntry[];
}

export interface VxlanDataplaneOptions extends NetnsOption {
  readonly device: string;
  readonly vni: number;
  readonly port: number;
  readonly mtu: number;
}

interface LinkJson {
  address?: string;
  mtu?: number;
  operstate?: string;
  flags?: string[];
  linkinfo?: { info_kind?: string; info_data?: { id?: number; port?: number; local?: string; learning?: boolean } };
}

export class VxlanDataplane {
  /** What was last written (a canonical key), 'absent' once removed; undefined: read the kernel. */
  private written: string | undefined;
  private readonly ns: string[];
  readonly device: string;

  constructor(private readonly o: VxlanDataplaneOptions) {
    this.device = assertIfName(o.device, 'VXLAN device name');
    const intIn = (v: number, min: number, max: number, what: string): void => {
      if (!Number.isInteger(v) || v < min || v > max) throw new DataplaneError(`${what} must be an integer from ${min} to ${max}, got ${v}`);
    };
    intIn(o.vni, 1, 16_777_215, 'VXLAN VNI');
    intIn(o.port, 1, 65_535, 'VXLAN port');
    intIn(o.mtu, 576, 65_535, 'VXLAN device MTU');
    this.ns = o.netns === undefined ? [] : ['-n', assertNetnsName(o.netns)];
  }

  resync(): void {
    this.written = undefined;
  }

  /** Creates or corrects the device and brings its entries in line with `want`. */
  async apply(want: KernelVxlan): Promise<void> {
    const local = ipv4(want.local, 'VXLAN local address');
    const mac = assertUnicastMac(want.mac.toLowerCase());
    const peers = new Map<string, string>();
    for (const p of want.peers) peers.set(ipv4(p.address, 'VXLAN peer address'), assertUnicastMac(p.mac.toLowerCase()));
    const key = JSON.stringify([local, mac, [...peers]]);
    if (this.written === key) return;
    this.written = undefined;
    await this.ensureDevice(local, mac);
    await this.syncNeighbours(peers);
    await this.syncFdb(new Map([...peers].map(([address, m]) => [m, address])));
    this.written = key;
  }

  /** Deletes the device (and with it its entries and the routes through it), if it exists. */
  async remove(): Promise<void> {
    if (this.written === 'absent') return;
    if ((await this.readLink()) !== undefined) await this.ip(['link', 'del', this.device], `delete ${this.device}`);
    this.written = 'absent';
  }

  private async ensureDevice(local: string, mac: string): Promise<void> {
    const link = await this.readLink();
    const d = link?.linkinfo?.info_data;
    const fits = link !== undefined && link.linkinfo?.info_kind === 'vxlan' && d?.id === this.o.vni && d.port === this.o.port && d.local === local && d.learning === false;
    if (link !== undefined && !fits) await this.ip(['link', 'del', this.device], `delete mismatched ${this.device}`);
    if (!fits) {
      await this.ip(
        ['link', 'add', this.device, 'type', 'vxlan', 'id', String(this.o.vni), 'dstport', String(this.o.port), 'local', local, 'nolearning'],
        `create ${this.device}`,
      );
    }
    if (!fits || link.address !== mac || link.mtu !== this.o.mtu || !(link.flags ?? []).includes('UP')) {
      await this.ip(['link', 'set', this.device, 'address', mac, 'mtu', String(this.o.mtu), 'up'], `set up ${this.device}`);
    }
  }

  private async syncNeighbours(want: ReadonlyMap<string, string>): Promise<void> {
    const rows = await this.json<Array<{ dst?: string; lladdr?: string; state?: string[] }>>(['-4', 'neigh', 'show', 'dev', this.device], 'list VXLAN neighbours');
    const have = new Map<string, string>();
    for (const r of rows) if (r.dst !== undefined) have.set(r.dst, `${r.lladdr ?? ''}/${(r.state ?? []).includes('PERMANENT') ? 'p' : ''}`);
    for (const [address, mac] of want) {
      if (have.get(address) === `${mac}/p`) continue;
      await this.ip(['neigh', 'replace', address, 'lladdr', mac, 'dev', this.device, 'nud', 'permanent'], `neighbour ${address} on ${this.device}`);
    }
    for (const address of have.keys()) {
      if (!want.has(address)) await this.ip(['neigh', 'del', ipv4(address, 'neighbour'), 'dev', this.device], `remove neighbour ${address} from ${this.device}`);
    }
  }

  private async syncFdb(want: ReadonlyMap<string, string>): Promise<void> {
    const { stdout } = await run('bridge', [...this.ns, '-j', 'fdb', 'show', 'dev', this.device], 'list VXLAN forwarding entries');
    const rows = parseJson<Array<{ mac?: string; dst?: string }>>(stdout, 'list VXLAN forwarding entries');
    const have = new Map<string, string[]>();
    for (const r of rows) if (r.mac !== undefined && r.dst !== undefined) have.set(r.mac, [...(have.get(r.mac) ?? []), r.dst]);
    for (const [mac, address] of want) {
      const dsts = have.get(mac) ?? [];
      if (dsts.length === 1 && dsts[0] === address) continue;
      for (const d of dsts) if (d !== address) await this.bridge(['fdb', 'del', mac, 'dev', this.device, 'dst', ipv4(d, 'forwarding entry'), 'self'], `remove ${mac} from ${this.device}`);
      await this.bridge(['fdb', 'replace', mac, 'dev', this.device, 'dst', address, 'self', 'permanent'], `forwarding entry ${mac} on ${this.device}`);
    }
    for (const [mac, dsts] of have) {
      if (want.has(mac)) continue;
      for (const d of dsts) await this.bridge(['fdb', 'del', assertUnicastMacOrZero(mac), 'dev', this.device, 'dst', ipv4(d, 'forwarding entry'), 'self'], `remove ${mac} from ${this.device}`);
    }
  }

  private async readLink(): Promise<LinkJson | undefined> {
    try {
      const rows = await this.json<LinkJson[]>(['-d', 'link', 'show', 'dev', this.device], `show ${this.device}`);
      return rows[0];
    } catch (err) {
      if (err instanceof CommandError && /does not exist|Cannot find device/i.test(err.stderr)) return undefined;
      throw err;
    }
  }

  private async json<T>(args: string[], op: string): Promise<T> {
    const { stdout } = await run('ip', [...this.ns, '-j', ...args], op);
    return parseJson<T>(stdout, op);
  }

  private async ip(args: string[], op: string): Promise<void> {
    await run('ip', [...this.ns, ...args], op);
  }

  private async bridge(args: string[], op: string): Promise<void> {
    await run('bridge', [...this.ns, ...args], op);
  }
}

function parseJson<T>(stdout: string, op: string): T {
  try {
    return JSON.parse(stdout.trim() === '' ? '[]' : stdout) as T;
  } catch (err) {
    throw new DataplaneError(`${op}: unexpected output: ${errorMessage(err)}`, { cause: err });
  }
}

function ipv4(text: string, what: string): string {
  try {
    const ip = parseIp(text);
    if (ip.family === 4) return formatIp(ip);
  } catch {
    // reported below
  }
  throw new DataplaneError(`${what} must be an IPv4 address, got ${JSON.stringify(text)}`);
}

/** Forwarding entries read back may include the all-zero default destination. */
function assertUnicastMacOrZero(mac: string): string {
  return mac === '00:00:00:00:00:00' ? mac : assertUnicastMac(mac);
}
