// What every benchmark prints with: order statistics and the result table.

export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[rank] as number;
}

export function median(values: readonly number[]): number {
  if (values.length === 0) return Number.NaN;
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 === 1 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2;
}

export const ms = (v: number): string => (Number.isNaN(v) ? '-' : v < 10 ? `${v.toFixed(1)} ms` : `${Math.round(v)} ms`);

export interface Row {
  readonly what: string;
  readonly value: string;
  readonly target?: string;
  readonly pass?: boolean;
  readonly detail?: string;
}

export function printTable(rows: readonly Row[]): void {
  const w = [
    Math.max(...rows.map((r) => r.what.length)),
    Math.max(...rows.map((r) => r.value.length)),
    Math.max(...rows.map((r) => (r.target ?? '').length)),
  ];
  for (const r of rows) {
    const result = r.pass === undefined ? '    ' : r.pass ? 'PASS' : 'MISS';
    console.log(
      `${r.what.padEnd(w[0] as number)}  ${r.value.padStart(w[1] as number)}  ${(r.target ?? '').padEnd(w[2] as number)}  ${result}` +
        (r.detail === undefined ? '' : `  ${r.detail}`),
    );
  }
}
