import test from 'ava';
import { InvalidRequestError } from '../../lib/errors';
import { isLabelKey, isLabelValue, MAX_SELECTOR_LENGTH, parseSelector, SelectorSyntaxError } from '../../policy/selector';

// [input, canonical text]
const canonical: [string, string][] = [
  ['', 'all()'],
  ['   \n\t ', 'all()'],
  ['all()', 'all()'],
  ['all ( )', 'all()'],
  ["role == 'db'", "role == 'db'"],
  ['role=="db"', "role == 'db'"],
  ["role != 'db'", "role != 'db'"],
  ["  has( tier )  ", 'has(tier)'],
  ['!has(tier)', '!has(tier)'],
  ['!!has(tier)', 'has(tier)'],
  ["!(role == 'db')", "role != 'db'"],
  ["!(role != 'db')", "role == 'db'"],
  ["role in {'b', 'a', 'b'}", "role in {'a', 'b'}"],
  ["role in {'a'}", "role == 'a'"],
  ["role not in {'a'}", "role != 'a'"],
  ["!(role in {'a', 'b'})", "role not in {'a', 'b'}"],
  ["role not in {'x','y'}", "role not in {'x', 'y'}"],
  ['role in {}', 'role in {}'],
  ["has(tier) && role == 'db'", "has(tier) && role == 'db'"],
  ["role == 'db' && has(tier)", "has(tier) && role == 'db'"],
  ["((role == 'db'))", "role == 'db'"],
  ["has(a) && has(a)", 'has(a)'],
  ["has(a) && all()", 'has(a)'],
  ["has(a) || all()", 'all()'],
  ["(has(c) && has(b)) && has(a)", 'has(a) && has(b) && has(c)'],
  ["has(c) || (has(b) || has(a))", 'has(a) || has(b) || has(c)'],
  ["(a == '1' || b == '2') && c == '3'", "(a == '1' || b == '2') && c == '3'"],
  ["a == '1' || b == '2' && c == '3'", "a == '1' || b == '2' && c == '3'"],
  ["!(has(a) && has(b))", '!(has(a) && has(b))'],
  ['!all()', '!all()'],
  ["has(has) && in == 'x' && all == ''", "all == '' && has(has) && in == 'x'"],
  ["app.kubernetes.io/name == 'web-1.2_x'", "app.kubernetes.io/name == 'web-1.2_x'"],
  ['has(my-net.)', 'has(my-net.)'],
];

for (const [input, text] of canonical) {
  test(`canonical: ${JSON.stringify(input)}`, (t) => {
    const sel = parseSelector(input);
    t.is(sel.text, text);
    t.is(parseSelector(sel.text).text, text, 'canonical text re-parses to itself');
  });
}

const L = (labels: Record<string, string>) => labels;
// [selector, labels, matches]
const matching: [string, Record<string, string>, boolean][] = [
  ['', L({}), true],
  ["role == 'db'", L({ role: 'db' }), true],
  ["role == 'db'", L({ role: 'web' }), false],
  ["role == 'db'", L({}), false],
  ["role != 'db'", L({}), true], // Calico: an absent label is "not equal"
  ["role != 'db'", L({ role: 'db' }), false],
  ["role == ''", L({ role: '' }), true],
  ["role == ''", L({}), false],
  ["role in {'a', 'b'}", L({ role: 'b' }), true],
  ["role in {'a', 'b'}", L({}), false],
  ['role in {}', L({ role: 'a' }), false],
  ["role not in {'a', 'b'}", L({}), true],
  ["role not in {'a', 'b'}", L({ role: 'a' }), false],
  ['has(tier)', L({ tier: '' }), true],
  ['!has(tier)', L({ tier: '' }), false],
  ["has(a) && b == 'x'", L({ a: '', b: 'x' }), true],
  ["has(a) && b == 'x'", L({ a: '' }), false],
  ["has(a) || b == 'x'", L({ b: 'x' }), true],
  ["a == '1' || b == '2' && c == '3'", L({ a: '1' }), true], // && binds tighter than ||
  ["(a == '1' || b == '2') && c == '3'", L({ a: '1' }), false],
  ["!(has(a) || has(b))", L({ c: '' }), true],
  ['!all()', L({ a: '' }), false],
  ['has(constructor)', L({}), false], // no prototype leakage
];

for (const [selector, labels, expected] of matching) {
  test(`matches: ${selector || '(empty)'} on ${JSON.stringify(labels)}`, (t) => {
    t.is(parseSelector(selector).matches(labels), expected);
  });
}

// [input, line, column, message after the position]
const errors: [string, number, number, string][] = [
  ['role == db', 1, 9, "expected a quoted value after '==', got 'db'"],
  ['role ==', 1, 8, "expected a quoted value after '==', got end of input"],
  ["role = 'x'", 1, 6, "unexpected character '=' (did you mean '=='?)"],
  ["a == 'x' & has(b)", 1, 10, "unexpected character '&' (did you mean '&&'?)"],
  ["a == 'x' | has(b)", 1, 10, "unexpected character '|' (did you mean '||'?)"],
  ['role', 1, 5, "expected '==', '!=', 'in' or 'not in' after label key 'role', got end of input"],
  ['(has(a)', 1, 8, "expected ')' to close the '(' at line 1, column 1, got end of input"],
  ['has(a))', 1, 7, "expected '&&', '||' or end of input, got ')'"],
  ["a == 'x' b", 1, 10, "expected '&&', '||' or end of input, got 'b'"],
  ["a in {'x',}", 1, 11, "expected a quoted value after ',', got '}'"],
  ["a in {'x' 'y'}", 1, 11, "expected ',' or '}' in a set of values, got the quoted value 'y'"],
  ["a in 'x'", 1, 6, "expected '{' to start a set of values after 'in', got the quoted value 'x'"],
  ["a not {'x'}", 1, 7, "expected 'in' after 'not', got '{'"],
  ['has()', 1, 5, "expected a label key inside 'has(', got ')'"],
  ['all(x)', 1, 5, "expected ')' after 'all(', got 'x'"],
  ['&& has(a)', 1, 1, "expected a label key, '!', '(', 'has(' or 'all()', got '&&'"],
  ["|| has(a)", 1, 1, "expected a label key, '!', '(', 'has(' or 'all()', got '||'"],
  ["'db' == role", 1, 1, "expected a label key, '!', '(', 'has(' or 'all()', got the quoted value 'db'"],
  ["has(a) &&", 1, 10, "expected a label key, '!', '(', 'has(' or 'all()', got end of input"],
  ["a == 'x\ny'", 1, 6, "quoted value starting here is not closed with ' on the same line"],
  ['a == "x', 1, 6, 'quoted value starting here is not closed with " on the same line'],
  ["Foo/bar == 'x'", 1, 1, "'Foo/bar' is not a valid label key: the prefix before '/' must be a lower-case DNS name of at most 253 characters"],
  ["-x == 'y'", 1, 1, "'-x' is not a valid label key: the name must be 1 to 253 letters, digits, '_', '.' or '-', starting with a letter or digit"],
  ["a == 'x --jump ACCEPT'", 1, 6, "'x --jump ACCEPT' is not a valid label value: it must be empty or at most 63 letters, digits, '_', '.' or '-', starting and ending with a letter or digit"],
  ["a == '-j'", 1, 6, "'-j' is not a valid label value: it must be empty or at most 63 letters, digits, '_', '.' or '-', starting and ending with a letter or digit"],
  ['r\u00f4le', 1, 2, 'unexpected character U+00F4'],
  ["a == 'x';", 1, 9, 'unexpected character \';\''],
  ['a == \'x\'\u0000', 1, 9, 'unexpected character U+0000'],
  // Multi-line input: positions count lines and columns from 1.
  ["role == 'db' &&\n  tier = 'x'", 2, 8, "unexpected character '=' (did you mean '=='?)"],
  ["has(a)\n&&\n\n   (b == c)", 4, 10, "expected a quoted value after '==', got 'c'"],
  ["(\n  has(a) ||\n  has(b)\n", 4, 1, "expected ')' to close the '(' at line 1, column 1, got end of input"],
  ['('.repeat(100), 1, 65, 'selector nests deeper than 64 levels'],
  ['!'.repeat(100) + 'has(a)', 1, 65, 'selector nests deeper than 64 levels'],
  ['x'.repeat(MAX_SELECTOR_LENGTH + 1), 1, MAX_SELECTOR_LENGTH + 1, `selector is longer than ${MAX_SELECTOR_LENGTH} characters`],
];

for (const [input, line, column, detail] of errors) {
  test(`error: ${JSON.stringify(input.length > 40 ? `${input.slice(0, 40)}...` : input)}`, (t) => {
    const err = t.throws(() => parseSelector(input), { instanceOf: SelectorSyntaxError });
    t.true(err instanceof InvalidRequestError, 'maps to a 400 through the error funnel');
    t.is(err?.message, `selector line ${line}, column ${column}: ${detail}`);
    t.is(err?.line, line);
    t.is(err?.column, column);
  });
}

test('a selector exactly at the length limit is accepted', (t) => {
  const text = `${'has(a) && '.repeat(400)}has(a)`;
  const padded = text + ' '.repeat(MAX_SELECTOR_LENGTH - text.length);
  t.is(padded.length, MAX_SELECTOR_LENGTH);
  t.is(parseSelector(padded).text, 'has(a)', 'duplicates collapse');
});

test('label key and value syntax', (t) => {
  for (const key of ['a', 'A_b.c-d', 'example.com/x', 'a-b.c/Name_1', 'net-', '9lives']) t.true(isLabelKey(key), key);
  for (const key of ['', '/a', 'a/', 'a/b/c', 'Example.com/x', '-a', '_a', 'a b', 'a\nb', 'x'.repeat(254)]) t.false(isLabelKey(key), key);
  for (const value of ['', 'a', 'web-1.2_x', 'x'.repeat(63)]) t.true(isLabelValue(value), value);
  for (const value of ['-a', 'a-', 'a b', 'x'.repeat(64), "it's", 'a\n']) t.false(isLabelValue(value), value);
});
