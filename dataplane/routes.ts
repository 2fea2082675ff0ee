// Writes the routes manager's plan into the kernel. Every route it writes carries its own routing
// protocol number, so it recognises exactly its own routes: it replaces what differs, deletes its
// strays, and never touches anyone else's (Join's /32s to veths, Docker's, an operator's).
// Routes are written in one `ip -batch` per apply; what it wrote is remembered, so an apply with
// nothing new runs no process, and a resync reads the kernel back first.
import type { IpFamily } from '../ipam/cidr';
import { DataplaneError, errorMessage } from '../lib/errors';
import { run, runWithInput } from './exec';
import { assertNetnsName } from './names';
import type { NetnsOption } from './veth';
import type { KernelVxlan, VxlanDataplane } from './vxlan';

export type KernelRoute =
  | { readonly kind: 'blackhole'; readonly dst: string; readonly family: IpFamily }
  | { readonly kind: 'via'; readonly dst: string; readonly via: string; readonly family: IpFamily }
  /** Through the VXLAN device, to the other host's address (onlink: it is not on the device). */
  | { readonly kind: 'vxlan'; readonly dst: string; readonly via: string; readonly family: 4 };

export interface RoutesDataplaneOptions extends NetnsOption {
  /** Routing protocol number marking our routes (1-255, not one of the kernel's own 0-4). */
  readonly protocol: number;
  readonly warn?: (message: string) => void;
  /** The VXLAN device, for routes of kind 'vxlan'; without it such routes are refused. */
  readonly vxlan?: VxlanDataplane;
}

interface IpRouteJson {
  type?: string;
  dst?: string;
  gateway?: string;
  dev?: string;
  flags?: string[];
}

export class RoutesDataplane {
  /** Route spec by destination, as last written; undefined: read the kernel first. */
  private written: Map<string, string> | undefined;
  private readonly ns: string[];

  constructor(private readonly o: RoutesDataplaneOptions) {
    if (!Number.isInteger(o.protocol) || o.protocol < 5 || o.protocol > 255) {
      throw new DataplaneError(`route protocol must be an integer from 5 to 255, got ${o.protocol}`);
    }
    this.ns = o.netns === undefined ? [] : ['-n', assertNetnsName(o.netns)];
  }

  resync(): void {
    this.written = undefined;
    this.o.vxlan?.resync();
  }

  /** Writes `routes`; with `vxlan`, the VXLAN device and its entries first (routes go through it);
   * without, the device is removed once no route needs it. */
  async apply(routes: readonly KernelRoute[], vxlan?: KernelVxlan): Promise<void> {
    if (vxlan !== undefined || routes.some((r) => r.kind === 'vxlan')) {
      if (this.o.vxlan === undefined) throw new DataplaneError('VXLAN routes planned, but no VXLAN device is configured');
      if (vxlan === undefined) throw new DataplaneError('VXLAN routes planned without the VXLAN device');
      await this.o.vxlan.apply(vxlan);
    }
    await this.applyRoutes(routes);
    if (vxlan === undefined) await this.o.vxlan?.remove();
  }

  private async applyRoutes(routes: readonly KernelRoute[]): Promise<void> {
    const current = this.written ?? (await this.readKernel());
    const desired = new Map(routes.map((r) => [r.dst, this.spec(r)]));
    const lines: string[] = [];
    for (const [dst, spec] of desired) if (current.get(dst) !== spec) lines.push(`route replace ${spec}`);
    for (const [dst, spec] of current) if (!desired.has(dst)) lines.push(`route del ${spec}`);
    if (lines.length === 0) {
      this.written = desired;
      return;
    }
    try {
      // -force: one unreachable next hop must not keep every other host's routes out.
      await runWithInput('ip', [...this.ns, '-force', '-batch', '-'], `${lines.join('\n')}\n`, `write ${lines.length} routes`);
      this.written = desired;
    } catch (err) {
      this.o.warn?.(`some routes could not be written (${errorMessage(err)}); the rest are in place`);
      this.written = await this.readKernel();
    }
  }

  /** Our routes as the kernel has them. */
  async readKernel(): Promise<Map<string, string>> {
    const out = new Map<string, string>();
    for (const family of ['-4', '-6'] as const) {
      const { stdout } = await run('ip', [...this.ns, '-j', family, 'route', 'show', 'proto', String(this.o.protocol)], 'list our routes');
      let rows: IpRouteJson[];
      try {
        rows = JSON.parse(stdout === '' ? '[]' : stdout) as IpRouteJson[];
      } catch (err) {
        throw new DataplaneError(`list our routes: unexpected output from ip: ${errorMessage(err)}`, { cause: err });
      }
      for (const r of rows) {
        if (r.dst === undefined) continue;
        const dst = r.dst.includes('/') ? r.dst : `${r.dst}/${family === '-4' ? 32 : 128}`;
        const f: IpFamily = family === '-4' ? 4 : 6;
        if (r.type === 'blackhole') out.set(dst, this.spec({ kind: 'blackhole', dst, family: f }));
        else if (f === 4 && r.gateway !== undefined && this.o.vxlan !== undefined && r.dev === this.o.vxlan.device && (r.flags ?? []).includes('onlink')) {
          out.set(dst, this.spec({ kind: 'vxlan', dst, via: r.gateway, family: 4 }));
        } else if (r.gateway !== undefined) out.set(dst, this.spec({ kind: 'via', dst, via: r.gateway, family: f }));
        else out.set(dst, `${dst} proto ${this.o.protocol}`); // ours but of a shape we never write: a stray
      }
    }
    return out;
  }

  /** Addresses in routes come from formatCidr/formatIp (canonical, validated): safe batch lines. */
  private spec(r: KernelRoute): string {
    if (r.kind === 'blackhole') return `blackhole ${r.dst} proto ${this.o.protocol}`;
    if (r.kind === 'via') return `${r.dst} via ${r.via} proto ${this.o.protocol}`;
    // The device name was validated by VxlanDataplane (an interface name: no spaces).
    return `${r.dst} via ${r.via} dev ${this.o.vxlan?.device ?? '?'} onlink proto ${this.o.protocol}`;
  }
}
