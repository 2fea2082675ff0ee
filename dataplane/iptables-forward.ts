// Let routed container traffic through the filter table's FORWARD chain even where Docker set its
// policy to DROP: our own chain (default `cali-FORWARD`) accepting `-i cali+` and `-o cali+`,
// jumped to once from the top of FORWARD, for iptables and ip6tables. A later policy engine
// replaces the accept rules with per-endpoint policy.
//
// Each family costs one `iptables -S` read and, only when something differs, one
// `iptables-restore --noflush` transaction that touches nothing but our chain and our jump. In that
// transaction `:CHAIN - [0:0]` creates the chain or flushes it, so its rules are rewritten whole.
// Two concurrent calls could both insert the jump; the next call heals that (it keeps exactly one).

import { InvalidRequestError } from '../lib/errors.js';
import { run, runWithInput } from './exec.js';
import { assertNetnsName } from './names.js';
import type { NetnsOption } from './veth.js';

export const DEFAULT_FORWARD_CHAIN = 'cali-FORWARD';
export const DEFAULT_IF_PREFIX = 'cali';

export interface ForwardAcceptOptions extends NetnsOption {
  /** Interface prefix of host ends; `+` is appended (iptables wildcard). */
  ifPrefix?: string;
  /** Our chain; parameterized so tests use unique names. */
  chain?: string;
  /** Also program ip6tables (default true). */
  ipv6?: boolean;
  /** Also program iptables (default true). */
  ipv4?: boolean;
}

export type IptablesFamily = 4 | 6;

export interface ForwardAcceptState {
  family: IptablesFamily;
  chainExists: boolean;
  /** Rules of our chain in `-S` form. */
  chainRules: string[];
  /** Positions (0-based, among FORWARD's rules) of jumps to our chain. */
  jumpPositions: number[];
}

const CHAIN_RE = /^[A-Za-z0-9_][A-Za-z0-9_-]{0,27}$/;
const IF_PREFIX_RE = /^[A-Za-z0-9_.-]{1,14}$/;
const RESERVED_CHAINS = new Set(['INPUT', 'OUTPUT', 'FORWARD', 'PREROUTING', 'POSTROUTING', 'ACCEPT', 'DROP', 'RETURN', 'QUEUE', 'REJECT', 'LOG']);

export async function ensureForwardAccept(opts: ForwardAcceptOptions = {}): Promise<void> {
  const { chain, ifPrefix, netns, families } = checkOptions(opts);
  for (const family of families) {
    const state = await readState(family, chain, netns);
    const wantRules = [
      `-A ${chain} -i ${ifPrefix}+ -j ACCEPT`,
      `-A ${chain} -o ${ifPrefix}+ -j ACCEPT`,
    ];
    const rulesOk = state.chainExists && sameList(state.chainRules, wantRules);
    const jumpOk = sameList(state.jumpPositions.map(String), ['0']);
    if (rulesOk && jumpOk) continue;
    const lines = ['*filter'];
    if (!rulesOk) lines.push(`:${chain} - [0:0]`, ...wantRules);
    if (!jumpOk) {
      for (let i = 0; i < state.jumpPositions.length; i++) lines.push(`-D FORWARD -j ${chain}`);
      lines.push(`-I FORWARD 1 -j ${chain}`);
    }
    lines.push('COMMIT');
    await restore(family, lines, netns, `ensure ${tool(family)} FORWARD accept chain ${chain}`);
  }
}

/** Remove the jump(s) and the chain. Idempotent. */
export async function removeForwardAccept(opts: ForwardAcceptOptions = {}): Promise<void> {
  const { chain, netns, families } = checkOptions(opts);
  for (const family of families) {
    const state = await readState(family, chain, netns);
    if (!state.chainExists && state.jumpPositions.length === 0) continue;
    const lines = ['*filter'];
    for (let i = 0; i < state.jumpPositions.length; i++) lines.push(`-D FORWARD -j ${chain}`);
    if (state.chainExists) lines.push(`-F ${chain}`, `-X ${chain}`);
    lines.push('COMMIT');
    await restore(family, lines, netns, `remove ${tool(family)} FORWARD accept chain ${chain}`);
  }
}

/** What is programmed now, per family (for tests and diagnostics). */
export async function inspectForwardAccept(opts: ForwardAcceptOptions = {}): Promise<ForwardAcceptState[]> {
  const { chain, netns, families } = checkOptions(opts);
  const out: ForwardAcceptState[] = [];
  for (const family of families) out.push(await readState(family, chain, netns));
  return out;
}

function checkOptions(opts: ForwardAcceptOptions) {
  const chain = opts.chain ?? DEFAULT_FORWARD_CHAIN;
  const ifPrefix = opts.ifPrefix ?? DEFAULT_IF_PREFIX;
  if (!CHAIN_RE.test(chain) || RESERVED_CHAINS.has(chain)) {
    throw new InvalidRequestError(`invalid iptables chain name ${JSON.stringify(chain)}`);
  }
  if (!IF_PREFIX_RE.test(ifPrefix)) {
    throw new InvalidRequestError(`invalid interface prefix ${JSON.stringify(ifPrefix)}`);
  }
  const netns = opts.netns === undefined ? undefined : assertNetnsName(opts.netns);
  const families: IptablesFamily[] = [];
  if (opts.ipv4 ?? true) families.push(4);
  if (opts.ipv6 ?? true) families.push(6);
  return { chain, ifPrefix, netns, families };
}

function tool(family: IptablesFamily): string {
  return family === 4 ? 'iptables' : 'ip6tables';
}

/** argv for a tool, run inside `netns` when given. */
function command(netns: string | undefined, file: string, args: string[]): [string, string[]] {
  return netns === undefined ? [file, args] : ['ip', ['netns', 'exec', netns, file, ...args]];
}

async function readState(family: IptablesFamily, chain: string, netns: string | undefined): Promise<ForwardAcceptState> {
  // `-S` prints the filter table in iptables-save rule syntax, the tools' machine format.
  const [file, args] = command(netns, tool(family), ['-w', '-t', 'filter', '-S']);
  const { stdout } = await run(file, args, `list ${tool(family)} filter table`);
  const lines = stdout.split('\n').map((l) => l.trim());
  const forward = lines.filter((l) => l.startsWith('-A FORWARD '));
  const jump = `-A FORWARD -j ${chain}`;
  return {
    family,
    chainExists: lines.includes(`-N ${chain}`),
    chainRules: lines.filter((l) => l.startsWith(`-A ${chain} `)),
    jumpPositions: forward.flatMap((l, i) => (l === jump ? [i] : [])),
  };
}

async function restore(family: IptablesFamily, lines: string[], netns: string | undefined, op: string): Promise<void> {
  const [file, args] = command(netns, `${tool(family)}-restore`, ['-w', '--noflush']);
  await runWithInput(file, args, lines.join('\n') + '\n', op);
}

function sameList(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}
