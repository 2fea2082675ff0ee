import test from 'ava';
import { parseFormat, render, renderTable } from '../../cli/output';

const columns = [
  { header: 'CIDR', value: (r: { cidr: string; n: number }) => r.cidr },
  { header: 'USED', value: (r: { cidr: string; n: number }) => String(r.n) },
];
const rows = [{ cidr: '10.0.0.0/16', n: 3 }, { cidr: 'fd00::/64', n: 12 }];

test('table columns are aligned', (t) => {
  t.is(renderTable(columns, rows), ['CIDR          USED', '10.0.0.0/16   3', 'fd00::/64     12'].join('\n'));
});

test('json and yaml carry the raw rows', (t) => {
  t.deepEqual(JSON.parse(render('json', columns, rows)), rows);
  t.is(render('yaml', columns, rows), '- cidr: 10.0.0.0/16\n  n: 3\n- cidr: fd00::/64\n  n: 12');
  t.is(render('yaml', columns, []), '[]');
});

test('unknown format is refused', (t) => {
  t.is(parseFormat(undefined), 'table');
  t.throws(() => parseFormat('xml'), { message: /-o must be table, json or yaml/ });
});
