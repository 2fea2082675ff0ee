// Reading `birdc show protocols` (pure). birdc exits non-zero on some answers (such as "Network
// not found" or "Access denied") and zero on others that are errors, so callers judge by the
// text, not the status. The table:
//
//   BIRD 2.0.12 ready.
//   Name       Proto      Table      State  Since         Info
//   mesh_198_18_1_12 BGP        ---        up     2026-11-30 20:42:10  Established
//
// Since is printed with `timeformat protocol iso long` (bird-config.ts): a date and a time.
import { type PeerKind, parseProtocolName } from './bird-config';

export interface BirdProtocol {
  readonly name: string;
  readonly proto: string;
  readonly table: string;
  readonly state: string;
  readonly since: string;
  readonly info: string;
}

export interface BgpSession {
  readonly peerAddress: string;
  readonly kind: PeerKind;
  /** BIRD's protocol state: up, start, down, ... */
  readonly state: string;
  readonly since: string;
  /** BGP state and last error: Established, Active, Connect, "Received: Bad peer AS", ... */
  readonly info: string;
}

/** Text birdc printed when the daemon behind the socket could not answer the command. */
export class BirdcError extends Error {}

const ROW = /^(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(?:\.\d+)?|\S+)\s*(.*)$/;

export function parseProtocols(output: string): BirdProtocol[] {
  const lines = output.split('\n').map((l) => l.replace(/\s+$/, ''));
  const header = lines.findIndex((l) => /^Name\s+Proto\s+Table\s+State\s+Since\s+Info$/.test(l));
  if (header < 0) {
    const why = lines.filter((l) => l !== '' && !/^BIRD [\d.]+ ready\.$/.test(l)).join('; ');
    throw new BirdcError(`unexpected answer from BIRD: ${why === '' ? '(empty)' : why}`);
  }
  const out: BirdProtocol[] = [];
  for (const line of lines.slice(header + 1)) {
    if (line === '' || /^\s/.test(line)) continue; // details of `show protocols all`
    const m = ROW.exec(line);
    if (m === null) continue;
    out.push({ name: m[1] ?? '', proto: m[2] ?? '', table: m[3] ?? '', state: m[4] ?? '', since: m[5] ?? '', info: (m[6] ?? '').trim() });
  }
  return out;
}

/** Our BGP sessions among BIRD's protocols (named by bird-config.ts), by peer address. */
export function bgpSessions(protocols: readonly BirdProtocol[]): BgpSession[] {
  const out: BgpSession[] = [];
  for (const p of protocols) {
    if (p.proto !== 'BGP') continue;
    const named = parseProtocolName(p.name);
    if (named === undefined) continue;
    out.push({ peerAddress: named.address, kind: named.kind, state: p.state, since: p.since, info: p.info });
  }
  return out.sort((a, b) => (a.peerAddress < b.peerAddress ? -1 : a.peerAddress > b.peerAddress ? 1 : a.kind < b.kind ? -1 : 1));
}

/** Calico's words for the session types. */
export function peerTypeLabel(kind: PeerKind): string {
  switch (kind) {
    case 'mesh':
      return 'node-to-node mesh';
    case 'rr':
      return 'route reflector';
    case 'global':
      return 'global';
    case 'node':
      return 'node specific';
  }
}
