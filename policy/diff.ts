// What to write to go from one DesiredState to the next (pure). The result is three batches: an
// `ipset restore` script that creates and updates sets before the rules that use them, one
// `iptables-restore --noflush` input per family, and an `ipset restore` script that destroys the
// sets the new rules no longer reference.
//
// Only chains whose rules changed are written: `:CHAIN - [0:0]` creates or flushes a chain inside
// the same transaction that refills it, so under the nf_tables backend (one transaction per table)
// no packet ever sees a half-written chain. Chains that went away are flushed first and deleted
// after every rewrite (a rewritten dispatch chain no longer references them by then). With
// DiffOptions.insertInPlace, a chain that only gained rules gets them inserted instead of being
// rewritten (same transaction, same result, no rule deleted: much cheaper under nf_tables).
//
// Base of the comparison:
//   - the state applied last (incremental);
//   - or, when that is unknown (start, after a failure), what the kernel holds: our chains as
//     iptables-save prints them, our sets as ipset save prints them. Render produces
//     iptables-save's spelling, so a restart with unchanged policy writes nothing; our top-level
//     jumps are healed (exactly one, at position 1) and every other reference to our chains,
//     every chain and every set of ours that is not wanted is removed;
//   - or nothing at all: write everything, remove nothing (tests, a fresh namespace).

import { DataplaneError } from '../lib/errors.js';
import { familyBits, tryParseIp } from '../ipam/cidr.js';
import { memberText } from './addresses.js';
import { sameStrings } from './iptables-text.js';
import {
  FAMILIES,
  ownsChain,
  ownsSet,
  assertPolicyPrefix,
  type ChainMap,
  type DesiredState,
  type Family,
  type IpSetSpec,
  type TopLevelJump,
} from './render.js';

/** A set as the kernel holds it (type and family as ipset prints them). */
export interface KernelSet {
  readonly type: string;
  /** undefined when the create line names no family we know. */
  readonly family: Family | undefined;
  /** Canonical spelling (the same as render's). */
  readonly members: readonly string[];
}

/** table → chain → rule specs (text after `-A <chain> `) as iptables-save prints them. */
export type TableDump = ReadonlyMap<string, ChainMap>;

export interface KernelSnapshot {
  readonly iptables: Readonly<Record<Family, TableDump>>;
  /** Sets (any owner; the diff looks only at the prefix's). */
  readonly sets: ReadonlyMap<string, KernelSet>;
}

export interface PlanStats {
  chainsWritten: number;
  chainsRemoved: number;
  setsWritten: number;
  setsRemoved: number;
  /** Top-level jumps inserted plus stray references deleted. */
  jumpsWritten: number;
}

export interface PolicyPlan {
  /** `ipset restore -exist` input: create, add, del. Empty: nothing to do. */
  readonly ipsetBefore: string;
  /** `iptables-restore --noflush` / `ip6tables-restore --noflush` input. Empty: nothing to do. */
  readonly iptables: Readonly<Record<Family, string>>;
  /** `ipset restore` input: destroy. */
  readonly ipsetAfter: string;
  readonly stats: PlanStats;
}

export interface DiffOptions {
  /**
   * Write a chain that only gained rules (its old rules are still there, in order) as inserts at
   * their positions (`-I <chain> <n>`, `-A` at the end) instead of redeclaring and refilling it.
   * Same result, same single transaction, but no rule is deleted: under nf_tables every deletion
   * makes the writing process wait for an RCU grace period when it closes its netlink socket
   * (10-20 ms here), which is most of what adding one endpoint costs. Rewriting a dispatch leaf
   * deletes all its rules; inserting the new endpoint's rule deletes none. Positions are those of
   * the base, so this is for a base known exactly: the state applied last, or the kernel's.
   */
  readonly insertInPlace?: boolean;
}

const TABLES = ['filter', 'nat'] as const;
const EMPTY_CHAINS: ChainMap = new Map();

export function emptyDesiredState(prefix: string): DesiredState {
  assertPolicyPrefix(prefix);
  const none = { 4: EMPTY_CHAINS, 6: EMPTY_CHAINS };
  return { prefix, filter: none, nat: none, jumps: { 4: [], 6: [] }, sets: new Map(), warnings: [] };
}

export function diffPolicy(
  applied: DesiredState | undefined,
  desired: DesiredState,
  kernel?: KernelSnapshot,
  options: DiffOptions = {},
): PolicyPlan {
  const inPlace = options.insertInPlace === true;
  if (applied !== undefined && applied.prefix !== desired.prefix) {
    throw new DataplaneError(`cannot diff policy with prefix ${applied.prefix} against ${desired.prefix}`);
  }
  const prefix = desired.prefix;
  const stats: PlanStats = { chainsWritten: 0, chainsRemoved: 0, setsWritten: 0, setsRemoved: 0, jumpsWritten: 0 };
  // A render of an unchanged model returns the very state it returned last time.
  if (applied === desired) return { ipsetBefore: '', iptables: { 4: '', 6: '' }, ipsetAfter: '', stats };
  const iptables = {} as Record<Family, string>;
  for (const family of FAMILIES) {
    const sections: string[] = [];
    const tables = new Set<string>(TABLES);
    if (applied === undefined && kernel !== undefined) for (const t of kernel.iptables[family].keys()) tables.add(t);
    for (const table of tables) {
      const want = chainsOf(desired, table, family);
      const wantJumps = desired.jumps[family].filter((j) => j.table === table);
      const section = newSection();
      if (applied !== undefined) {
        tableDiff(section, want, chainsOf(applied, table, family), stats, inPlace);
        jumpDiff(section, wantJumps, applied.jumps[family].filter((j) => j.table === table), stats);
      } else if (kernel !== undefined) {
        const dump = kernel.iptables[family].get(table) ?? new Map<string, readonly string[]>();
        const ours = new Map([...dump].filter(([c]) => ownsChain(prefix, c)));
        tableDiff(section, want, ours, stats, inPlace);
        healReferences(section, prefix, wantJumps, dump, want, stats);
      } else {
        tableDiff(section, want, EMPTY_CHAINS, stats, false);
        jumpDiff(section, wantJumps, [], stats);
      }
      if (sectionSize(section) > 0) pushSection(sections, table, section);
    }
    iptables[family] = sections.length === 0 ? '' : sections.join('\n') + '\n';
  }

  let baseSets: ReadonlyMap<string, { type: string; family: Family | undefined; members: readonly string[] }>;
  if (applied !== undefined) baseSets = applied.sets;
  else if (kernel !== undefined) baseSets = new Map([...kernel.sets].filter(([n]) => ownsSet(prefix, n)));
  else baseSets = new Map();
  const before: string[] = [];
  const after: string[] = [];
  for (const [name, spec] of desired.sets) {
    const base = baseSets.get(name);
    if (base !== undefined && (base.type !== spec.type || base.family !== spec.family)) {
      // Names encode type and family, so only a hand-made set can clash; it may be referenced by
      // rules we do not know, so do not guess.
      throw new DataplaneError(
        `ipset ${name} exists as ${base.type} family ${familyName(base.family)}, but policy needs ` +
          `${spec.type} family ${familyName(spec.family)}; remove it (or all policy state) and resync`,
      );
    }
    const lines = setDiff(name, spec, base?.members);
    if (lines.length > 0) {
      stats.setsWritten++;
      before.push(...lines);
    }
  }
  for (const name of baseSets.keys()) {
    if (!desired.sets.has(name)) {
      stats.setsRemoved++;
      after.push(`destroy ${name}`);
    }
  }
  return {
    ipsetBefore: before.length === 0 ? '' : before.join('\n') + '\n',
    iptables,
    ipsetAfter: after.length === 0 ? '' : after.join('\n') + '\n',
    stats,
  };
}

function chainsOf(state: DesiredState, table: string, family: Family): ChainMap {
  return table === 'filter' || table === 'nat' ? state[table][family] : EMPTY_CHAINS;
}

/** One table's lines, by rank; written out in this order: declarations, appends (and in-place
 * inserts), deletes of references, inserts of jumps, flushes, deletes of chains. Each rank keeps
 * the order its lines were added in, so each chain's rules stay in order. */
const RANKS = ['declare', 'append', 'unref', 'insert', 'flush', 'remove'] as const;
type Section = Record<(typeof RANKS)[number], string[]>;

function newSection(): Section {
  return { declare: [], append: [], unref: [], insert: [], flush: [], remove: [] };
}

function sectionSize(section: Section): number {
  return RANKS.reduce((n, r) => n + section[r].length, 0);
}

/** Appends `*table`, the section's lines and COMMIT (no spreading: a full write of a large host
 * has tens of thousands of lines). */
function pushSection(out: string[], table: string, section: Section): void {
  out.push(`*${table}`);
  for (const r of RANKS) for (const l of section[r]) out.push(l);
  out.push('COMMIT');
}

function tableDiff(out: Section, want: ChainMap, base: ChainMap, stats: PlanStats, inPlace: boolean): void {
  for (const [chain, rules] of want) {
    const old = base.get(chain);
    // Render reuses the arrays of unchanged cached chains: most chains compare by reference.
    if (old !== undefined && sameStrings(old, rules)) continue;
    stats.chainsWritten++;
    const added = inPlace && old !== undefined ? insertedPositions(old, rules) : undefined;
    if (old !== undefined && added !== undefined) {
      // Ascending: when the rule for position p goes in, positions 0..p-1 already hold their
      // final rules, so "insert before rule p+1" puts it at p; past the old rules it appends.
      // Ranked 'append' to stay after the declarations of the chains they may jump to.
      added.forEach((p, k) => {
        const atEnd = p === old.length + k; // the chain holds old.length + k rules by now
        out.append.push(atEnd ? `-A ${chain} ${rules[p]}` : `-I ${chain} ${p + 1} ${rules[p]}`);
      });
      continue;
    }
    out.declare.push(`:${chain} - [0:0]`);
    for (const r of rules) out.append.push(`-A ${chain} ${r}`);
  }
  for (const chain of base.keys()) {
    if (want.has(chain)) continue;
    stats.chainsRemoved++;
    out.flush.push(`-F ${chain}`);
    out.remove.push(`-X ${chain}`);
  }
}

/** Positions in `rules` of the rules added to `old`, if `old` is a subsequence of `rules` (nothing
 * removed or reordered, at least one old rule kept); undefined otherwise. */
function insertedPositions(old: readonly string[], rules: readonly string[]): number[] | undefined {
  if (old.length === 0 || rules.length <= old.length) return undefined;
  const added: number[] = [];
  let i = 0;
  for (let p = 0; p < rules.length; p++) {
    if (i < old.length && rules[p] === old[i]) i++;
    else added.push(p);
  }
  return i === old.length ? added : undefined;
}

function jumpDiff(out: Section, want: readonly TopLevelJump[], base: readonly TopLevelJump[], stats: PlanStats): void {
  const key = (j: TopLevelJump) => `${j.from} ${j.to}`;
  const baseKeys = new Set(base.map(key));
  const wantKeys = new Set(want.map(key));
  for (const j of want) {
    if (baseKeys.has(key(j))) continue;
    stats.jumpsWritten++;
    out.insert.push(`-I ${j.from} 1 -j ${j.to}`);
  }
  for (const j of base) {
    if (wantKeys.has(key(j))) continue;
    stats.jumpsWritten++;
    out.unref.push(`-D ${j.from} -j ${j.to}`);
  }
}

const TARGET_RE = /(?:^| )-[jg] (\S+)/;

/**
 * Against the kernel: every chain not ours that references ours keeps only the wanted jump, once,
 * at position 1; other references are deleted (by their exact spec, once per occurrence), so the
 * chains they point to can go.
 */
function healReferences(
  out: Section,
  prefix: string,
  wantJumps: readonly TopLevelJump[],
  dump: ChainMap,
  want: ChainMap,
  stats: PlanStats,
): void {
  const handled = new Set<string>();
  for (const [chain, rules] of dump) {
    if (ownsChain(prefix, chain)) continue;
    const jump = wantJumps.find((j) => j.from === chain);
    const jumpSpec = jump === undefined ? undefined : `-j ${jump.to}`;
    const positions: number[] = [];
    rules.forEach((r, i) => {
      if (r === jumpSpec) {
        positions.push(i);
        return;
      }
      const target = TARGET_RE.exec(r)?.[1];
      if (target !== undefined && ownsChain(prefix, target)) {
        stats.jumpsWritten++;
        out.unref.push(`-D ${chain} ${r}`);
      }
    });
    if (jump !== undefined && jumpSpec !== undefined) {
      handled.add(chain);
      if (positions.length === 1 && positions[0] === 0 && want.has(jump.to)) continue;
      for (let i = 0; i < positions.length; i++) out.unref.push(`-D ${chain} ${jumpSpec}`);
      stats.jumpsWritten++;
      out.insert.push(`-I ${chain} 1 ${jumpSpec}`);
    }
  }
  for (const j of wantJumps) {
    if (handled.has(j.from)) continue;
    // The built-in chain was not in the dump (the table did not exist yet).
    stats.jumpsWritten++;
    out.insert.push(`-I ${j.from} 1 -j ${j.to}`);
  }
}

function setDiff(name: string, spec: IpSetSpec, base: readonly string[] | undefined): string[] {
  const out: string[] = [];
  if (base === undefined) {
    out.push(`create ${name} ${spec.type} family ${familyName(spec.family)}`);
    for (const m of spec.members) out.push(`add ${name} ${m}`);
    return out;
  }
  // Most sets are unchanged (often the very same array): no need to build two Sets for them.
  if (sameStrings(base, spec.members)) return out;
  const had = new Set(base);
  const has = new Set(spec.members);
  // Adds before deletes: a set is never emptier than both its old and its new content.
  for (const m of spec.members) if (!had.has(m)) out.push(`add ${name} ${m}`);
  for (const m of base) if (!has.has(m)) out.push(`del ${name} ${m}`);
  return out;
}

function familyName(family: Family | undefined): string {
  return family === 4 ? 'inet' : family === 6 ? 'inet6' : 'unknown';
}

// ---------------------------------------------------------------------------------------------
// Parsing what the kernel tools print

/** `iptables-save` output → table → chain → rule specs (every chain, built-in ones included). */
export function parseIptablesSave(text: string): Map<string, Map<string, string[]>> {
  const tables = new Map<string, Map<string, string[]>>();
  let current: Map<string, string[]> | undefined;
  for (const raw of text.split('\n')) {
    const line = raw.trimEnd();
    if (line.startsWith('*')) {
      current = new Map();
      tables.set(line.slice(1), current);
    } else if (current === undefined) {
      continue;
    } else if (line.startsWith(':')) {
      const name = line.slice(1).split(' ')[0];
      if (name !== undefined && !current.has(name)) current.set(name, []);
    } else if (line.startsWith('-A ')) {
      const sp = line.indexOf(' ', 3);
      const chain = sp < 0 ? line.slice(3) : line.slice(3, sp);
      const spec = sp < 0 ? '' : line.slice(sp + 1);
      let rules = current.get(chain);
      if (rules === undefined) {
        rules = [];
        current.set(chain, rules);
      }
      rules.push(spec);
    }
  }
  return tables;
}

/** `ipset save` output → sets accepted by `keep` (name), members canonical like render's. */
export function parseIpsetSave(text: string, keep: (name: string) => boolean = () => true): Map<string, KernelSet> {
  const sets = new Map<string, { type: string; family: Family | undefined; members: string[] }>();
  for (const raw of text.split('\n')) {
    const parts = raw.trim().split(/\s+/);
    const [verb, name, arg] = parts;
    if (name === undefined || arg === undefined || !keep(name)) continue;
    if (verb === 'create') {
      const fi = parts.indexOf('family');
      const fam = fi < 0 ? 'inet' : parts[fi + 1];
      sets.set(name, { type: arg, family: fam === 'inet' ? 4 : fam === 'inet6' ? 6 : undefined, members: [] });
    } else if (verb === 'add') {
      const s = sets.get(name);
      if (s !== undefined) s.members.push(canonicalMember(arg, s.family));
    }
  }
  for (const s of sets.values()) s.members.sort();
  return sets;
}

/** Canonical spelling of an address or CIDR as a set member (full-length prefixes bare). */
function canonicalMember(text: string, family: Family | undefined): string {
  const slash = text.indexOf('/');
  const ip = tryParseIp(slash < 0 ? text : text.slice(0, slash));
  if (ip === undefined || (family !== undefined && ip.family !== family)) return text;
  const bits = familyBits(ip.family);
  const prefix = slash < 0 ? bits : Number(text.slice(slash + 1));
  if (!Number.isInteger(prefix) || prefix < 0 || prefix > bits) return text;
  return memberText({ family: ip.family, network: ip.value, prefix });
}
