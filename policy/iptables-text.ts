// Spelling as iptables-save prints it: quoted comments, the code-unit order rendered lists are
// sorted in, and a whole desired state as iptables-save-like text (golden files, debugging).

import { InvalidRequestError } from '../lib/errors.js';
import type { DesiredState, Family } from './render-types.js';

/** `-m comment --comment ...` quoted the way iptables-save prints it. Only fixed text and
 * validated names reach here; anything else is refused. */
export function comment(text: string): string {
  if (!/^[A-Za-z0-9 _.:,\/+-]{1,128}$/.test(text)) throw new InvalidRequestError(`unsafe comment ${JSON.stringify(text)}`);
  return `-m comment --comment ${text.includes(' ') ? `"${text}"` : text}`;
}

export function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** Element-wise equal string lists. */
export function sameStrings(a: readonly string[], b: readonly string[]): boolean {
  if (a === b) return true;
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** iptables-save-like text of one family (filter then nat) and the sets: golden files, debugging. */
export function formatDesiredState(state: DesiredState, family: Family): string {
  const lines: string[] = [];
  for (const table of ['filter', 'nat'] as const) {
    lines.push(`*${table}`);
    const chains = state[table][family];
    for (const chain of chains.keys()) lines.push(`:${chain} - [0:0]`);
    for (const j of state.jumps[family]) if (j.table === table) lines.push(`-A ${j.from} -j ${j.to}`);
    for (const [chain, rules] of chains) for (const r of rules) lines.push(`-A ${chain} ${r}`);
    lines.push('COMMIT');
  }
  for (const [name, s] of state.sets) {
    if (s.family !== family) continue;
    lines.push(`# set ${name} ${s.type}: ${s.members.join(' ')}`);
  }
  return lines.join('\n') + '\n';
}
