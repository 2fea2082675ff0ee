// Rendering for calicoctl: every command builds plain data once and prints it as a table, JSON or
// YAML, so the three formats never disagree.
import { stringify } from 'yaml';
import { InvalidRequestError } from '../lib/errors';

export type OutputFormat = 'table' | 'json' | 'yaml';

export function parseFormat(value: string | undefined): OutputFormat {
  const v = value ?? 'table';
  if (v === 'table' || v === 'json' || v === 'yaml') return v;
  throw new InvalidRequestError(`-o must be table, json or yaml, got '${v}'`);
}

export interface Column<T> {
  readonly header: string;
  readonly value: (row: T) => string;
}

export function renderTable<T>(columns: readonly Column<T>[], rows: readonly T[]): string {
  const cells = [columns.map((c) => c.header), ...rows.map((r) => columns.map((c) => c.value(r)))];
  const widths = columns.map((_, i) => Math.max(...cells.map((line) => (line[i] ?? '').length)));
  return cells
    .map((line) => line.map((cell, i) => (i === line.length - 1 ? cell : cell.padEnd(widths[i] ?? 0))).join('   ').trimEnd())
    .join('\n');
}

export function render<T>(format: OutputFormat, columns: readonly Column<T>[], rows: readonly T[]): string {
  switch (format) {
    case 'json':
      return JSON.stringify(rows, null, 2);
    case 'yaml':
      return rows.length === 0 ? '[]' : stringify(rows).trimEnd();
    case 'table':
      return renderTable(columns, rows);
  }
}
