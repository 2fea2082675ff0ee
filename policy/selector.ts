// Calico's label selector language: a tokenizer and a recursive-descent parser producing a small
// expression tree, which is matched against labels and rendered back as canonical text.
//
// The canonical text is what gets stored and what names ipsets, so two spellings of one selector
// must render alike where that is cheap (whitespace, quote style, redundant parentheses, operand
// order of && and ||, duplicates, `!(a == 'x')` vs `a != 'x'`, one-value sets). It only ever
// contains label keys, label values and the operator characters, never whitespace other than
// single spaces: label values are restricted to the Kubernetes value syntax (a value that no label
// can hold could never match anyway), so the text is safe to carry into iptables comments and
// ipset names' sources.
//
// Matching follows Calico: `k != 'v'` and `k not in {...}` also match endpoints without label k.
import { InvalidRequestError } from '../lib/errors';
import type { Labels } from './types';

export const MAX_SELECTOR_LENGTH = 4096;
export const MAX_SELECTOR_DEPTH = 64;

export interface Selector {
  /** Canonical rendering; parseSelector(s.text).text === s.text. */
  readonly text: string;
  matches(labels: Labels): boolean;
}

export class SelectorSyntaxError extends InvalidRequestError {
  constructor(
    readonly line: number,
    readonly column: number,
    detail: string,
  ) {
    super(`selector line ${line}, column ${column}: ${detail}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Label syntax (shared with profiles and endpoints, because selectors can only name what labels
// can hold).

const DNS_LABEL = '[a-z0-9]([-a-z0-9]*[a-z0-9])?';
const KEY_PREFIX = new RegExp(`^${DNS_LABEL}(\\.${DNS_LABEL})*$`);
// Longer than Kubernetes' 63 because profile names (Docker network names, up to 253 characters,
// possibly ending in '-' or '.') are used as label keys by the default profile.
/** A label key's name part; also the profile name syntax (policy/profile-resource.ts PROFILE_NAME). */
export const KEY_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,252}$/;
const LABEL_VALUE = /^([A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?$/;
const MAX_KEY_PREFIX_LENGTH = 253;

/** Why key is not a valid label key ([dns-prefix/]name), or undefined if it is. */
export function labelKeyProblem(key: string): string | undefined {
  const slash = key.indexOf('/');
  const name = slash < 0 ? key : key.slice(slash + 1);
  if (slash >= 0) {
    const prefix = key.slice(0, slash);
    if (prefix.length > MAX_KEY_PREFIX_LENGTH || !KEY_PREFIX.test(prefix)) {
      return `the prefix before '/' must be a lower-case DNS name of at most ${MAX_KEY_PREFIX_LENGTH} characters`;
    }
  }
  if (!KEY_NAME.test(name)) {
    return 'the name must be 1 to 253 letters, digits, \'_\', \'.\' or \'-\', starting with a letter or digit';
  }
  return undefined;
}

/** Why value is not a valid label value, or undefined if it is. */
export function labelValueProblem(value: string): string | undefined {
  return LABEL_VALUE.test(value)
    ? undefined
    : 'it must be empty or at most 63 letters, digits, \'_\', \'.\' or \'-\', starting and ending with a letter or digit';
}

export const isLabelKey = (key: string): boolean => labelKeyProblem(key) === undefined;
export const isLabelValue = (value: string): boolean => labelValueProblem(value) === undefined;

// ---------------------------------------------------------------------------------------------
// Tokens

type TokenType = 'word' | 'string' | 'op' | 'end';

interface Token {
  readonly type: TokenType;
  /** Words and operators as written; strings without their quotes. */
  readonly text: string;
  readonly offset: number;
}

const WORD_CHAR = /[A-Za-z0-9_./-]/;
const OPERATORS = ['==', '!=', '&&', '||', '!', '(', ')', '{', '}', ','] as const;
const WHITESPACE = new Set([' ', '\t', '\n', '\r']);

function position(source: string, offset: number): { line: number; column: number } {
  let line = 1;
  let lineStart = 0;
  for (let i = 0; i < offset && i < source.length; i++) {
    if (source[i] === '\n') {
      line++;
      lineStart = i + 1;
    }
  }
  return { line, column: offset - lineStart + 1 };
}

function errorAt(source: string, offset: number, detail: string): SelectorSyntaxError {
  const { line, column } = position(source, offset);
  return new SelectorSyntaxError(line, column, detail);
}

function showChar(ch: string): string {
  const code = ch.codePointAt(0) ?? 0;
  return code < 0x20 || code === 0x7f || code > 0x7e ? `U+${code.toString(16).toUpperCase().padStart(4, '0')}` : `'${ch}'`;
}

function tokenize(source: string): Token[] {
  const tokens: Token[] = [];
  let i = 0;
  while (i < source.length) {
    const ch = source[i] as string;
    if (WHITESPACE.has(ch)) {
      i++;
      continue;
    }
    if (ch === "'" || ch === '"') {
      const close = source.indexOf(ch, i + 1);
      const newline = source.indexOf('\n', i + 1);
      if (close < 0 || (newline >= 0 && newline < close)) throw errorAt(source, i, `quoted value starting here is not closed with ${ch} on the same line`);
      tokens.push({ type: 'string', text: source.slice(i + 1, close), offset: i });
      i = close + 1;
      continue;
    }
    if (WORD_CHAR.test(ch)) {
      const start = i;
      while (i < source.length && WORD_CHAR.test(source[i] as string)) i++;
      tokens.push({ type: 'word', text: source.slice(start, i), offset: start });
      continue;
    }
    const op = OPERATORS.find((o) => source.startsWith(o, i));
    if (op === undefined) {
      const hint = ch === '&' ? " (did you mean '&&'?)" : ch === '|' ? " (did you mean '||'?)" : ch === '=' ? " (did you mean '=='?)" : '';
      throw errorAt(source, i, `unexpected character ${showChar(String.fromCodePoint(source.codePointAt(i) ?? 0))}${hint}`);
    }
    tokens.push({ type: 'op', text: op, offset: i });
    i += op.length;
  }
  tokens.push({ type: 'end', text: '', offset: source.length });
  return tokens;
}

function describe(t: Token): string {
  if (t.type === 'end') return 'end of input';
  if (t.type === 'string') return `the quoted value '${t.text}'`;
  return `'${t.text}'`;
}

// ---------------------------------------------------------------------------------------------
// Expression tree. Built through the smart constructors below, which apply the cheap
// normalizations, so rendering a tree is all it takes to get canonical text.

type Node =
  | { readonly kind: 'all' }
  | { readonly kind: 'has'; readonly key: string }
  | { readonly kind: 'eq' | 'ne'; readonly key: string; readonly value: string }
  | { readonly kind: 'in' | 'notin'; readonly key: string; readonly values: readonly string[] }
  | { readonly kind: 'not'; readonly expr: Node }
  | { readonly kind: 'and' | 'or'; readonly terms: readonly Node[] };

const ALL: Node = { kind: 'all' };

function setNode(kind: 'in' | 'notin', key: string, values: readonly string[]): Node {
  const unique = [...new Set(values)].sort();
  if (unique.length === 1) return { kind: kind === 'in' ? 'eq' : 'ne', key, value: unique[0] as string };
  return { kind, key, values: unique };
}

function notNode(expr: Node): Node {
  switch (expr.kind) {
    case 'not':
      return expr.expr;
    case 'eq':
      return { kind: 'ne', key: expr.key, value: expr.value };
    case 'ne':
      return { kind: 'eq', key: expr.key, value: expr.value };
    case 'in':
      return { kind: 'notin', key: expr.key, values: expr.values };
    case 'notin':
      return { kind: 'in', key: expr.key, values: expr.values };
    default:
      return { kind: 'not', expr };
  }
}

function junction(kind: 'and' | 'or', operands: readonly Node[]): Node {
  const flat: Node[] = [];
  for (const n of operands) {
    if (n.kind === kind) flat.push(...n.terms);
    else flat.push(n);
  }
  // all() is the identity of && and absorbs ||.
  if (kind === 'or' && flat.some((n) => n.kind === 'all')) return ALL;
  const byText = new Map<string, Node>();
  for (const n of flat) if (n.kind !== 'all') byText.set(render(n), n);
  const terms = [...byText.keys()].sort().map((text) => byText.get(text) as Node);
  if (terms.length === 0) return ALL;
  if (terms.length === 1) return terms[0] as Node;
  return { kind, terms };
}

function render(n: Node): string {
  switch (n.kind) {
    case 'all':
      return 'all()';
    case 'has':
      return `has(${n.key})`;
    case 'eq':
      return `${n.key} == '${n.value}'`;
    case 'ne':
      return `${n.key} != '${n.value}'`;
    case 'in':
    case 'notin':
      return `${n.key} ${n.kind === 'in' ? 'in' : 'not in'} {${n.values.map((v) => `'${v}'`).join(', ')}}`;
    case 'not':
      return n.expr.kind === 'and' || n.expr.kind === 'or' ? `!(${render(n.expr)})` : `!${render(n.expr)}`;
    case 'and':
      return n.terms.map((t) => (t.kind === 'or' ? `(${render(t)})` : render(t))).join(' && ');
    case 'or':
      return n.terms.map(render).join(' || ');
  }
}

function evaluate(n: Node, labels: Labels): boolean {
  const get = (key: string): string | undefined => (Object.prototype.hasOwnProperty.call(labels, key) ? labels[key] : undefined);
  switch (n.kind) {
    case 'all':
      return true;
    case 'has':
      return get(n.key) !== undefined;
    case 'eq':
      return get(n.key) === n.value;
    case 'ne':
      return get(n.key) !== n.value;
    case 'in': {
      const v = get(n.key);
      return v !== undefined && n.values.includes(v);
    }
    case 'notin': {
      const v = get(n.key);
      return v === undefined || !n.values.includes(v);
    }
    case 'not':
      return !evaluate(n.expr, labels);
    case 'and':
      return n.terms.every((t) => evaluate(t, labels));
    case 'or':
      return n.terms.some((t) => evaluate(t, labels));
  }
}

// ---------------------------------------------------------------------------------------------
// Parser. Grammar (precedence ! > && > ||):
//   or      := and ('||' and)*
//   and     := unary ('&&' unary)*
//   unary   := '!' unary | primary
//   primary := '(' or ')' | 'all' '(' ')' | 'has' '(' key ')'
//            | key ('==' | '!=') value | key 'in' set | key 'not' 'in' set
//   set     := '{' (value (',' value)*)? '}'
// 'all', 'has', 'in' and 'not' are keywords only where the grammar expects them, so they remain
// usable as label keys (`has == 'x'`).

class Parser {
  private pos = 0;
  private depth = 0;

  constructor(
    private readonly source: string,
    private readonly tokens: readonly Token[],
  ) {}

  parse(): Node {
    if (this.peek().type === 'end') return ALL;
    const node = this.or();
    const t = this.peek();
    if (t.type !== 'end') throw this.error(t, `expected '&&', '||' or end of input, got ${describe(t)}`);
    return node;
  }

  private peek(ahead = 0): Token {
    return this.tokens[Math.min(this.pos + ahead, this.tokens.length - 1)] as Token;
  }

  private next(): Token {
    const t = this.peek();
    if (t.type !== 'end') this.pos++;
    return t;
  }

  private isOp(t: Token, op: string): boolean {
    return t.type === 'op' && t.text === op;
  }

  private expectOp(op: string, context: string): Token {
    const t = this.next();
    if (!this.isOp(t, op)) throw this.error(t, `expected '${op}' ${context}, got ${describe(t)}`);
    return t;
  }

  private error(t: Token, detail: string): SelectorSyntaxError {
    return errorAt(this.source, t.offset, detail);
  }

  private nest<T>(at: Token, f: () => T): T {
    if (++this.depth > MAX_SELECTOR_DEPTH) throw this.error(at, `selector nests deeper than ${MAX_SELECTOR_DEPTH} levels`);
    try {
      return f();
    } finally {
      this.depth--;
    }
  }

  private or(): Node {
    const terms = [this.and()];
    while (this.isOp(this.peek(), '||')) {
      this.next();
      terms.push(this.and());
    }
    return terms.length === 1 ? (terms[0] as Node) : junction('or', terms);
  }

  private and(): Node {
    const terms = [this.unary()];
    while (this.isOp(this.peek(), '&&')) {
      this.next();
      terms.push(this.unary());
    }
    return terms.length === 1 ? (terms[0] as Node) : junction('and', terms);
  }

  private unary(): Node {
    const t = this.peek();
    if (this.isOp(t, '!')) {
      this.next();
      return this.nest(t, () => notNode(this.unary()));
    }
    return this.primary();
  }

  private primary(): Node {
    const t = this.next();
    if (this.isOp(t, '(')) {
      const inner = this.nest(t, () => this.or());
      this.expectOp(')', `to close the '(' at ${this.where(t)}`);
      return inner;
    }
    if (t.type === 'word' && this.isOp(this.peek(), '(') && (t.text === 'all' || t.text === 'has')) {
      this.next();
      if (t.text === 'all') {
        this.expectOp(')', "after 'all('");
        return ALL;
      }
      const key = this.key(this.next(), "inside 'has('");
      this.expectOp(')', `after 'has(${key}'`);
      return { kind: 'has', key };
    }
    if (t.type !== 'word') throw this.error(t, `expected a label key, '!', '(', 'has(' or 'all()', got ${describe(t)}`);
    const key = this.key(t, '');
    const op = this.next();
    if (this.isOp(op, '==') || this.isOp(op, '!=')) {
      const value = this.value(this.next(), `after '${op.text}'`);
      return { kind: op.text === '==' ? 'eq' : 'ne', key, value };
    }
    if (op.type === 'word' && op.text === 'in') return setNode('in', key, this.set());
    if (op.type === 'word' && op.text === 'not') {
      const inKw = this.next();
      if (inKw.type !== 'word' || inKw.text !== 'in') throw this.error(inKw, `expected 'in' after 'not', got ${describe(inKw)}`);
      return setNode('notin', key, this.set());
    }
    throw this.error(op, `expected '==', '!=', 'in' or 'not in' after label key '${key}', got ${describe(op)}`);
  }

  private set(): string[] {
    this.expectOp('{', "to start a set of values after 'in'");
    const values: string[] = [];
    if (this.isOp(this.peek(), '}')) {
      this.next();
      return values;
    }
    for (;;) {
      values.push(this.value(this.next(), values.length === 0 ? "after '{'" : "after ','"));
      const t = this.next();
      if (this.isOp(t, '}')) return values;
      if (!this.isOp(t, ',')) throw this.error(t, `expected ',' or '}' in a set of values, got ${describe(t)}`);
    }
  }

  private key(t: Token, context: string): string {
    if (t.type !== 'word') throw this.error(t, `expected a label key${context === '' ? '' : ` ${context}`}, got ${describe(t)}`);
    const problem = labelKeyProblem(t.text);
    if (problem !== undefined) throw this.error(t, `'${t.text}' is not a valid label key: ${problem}`);
    return t.text;
  }

  private value(t: Token, context: string): string {
    if (t.type !== 'string') throw this.error(t, `expected a quoted value ${context}, got ${describe(t)}`);
    const problem = labelValueProblem(t.text);
    if (problem !== undefined) throw this.error(t, `'${t.text}' is not a valid label value: ${problem}`);
    return t.text;
  }

  private where(t: Token): string {
    const { line, column } = position(this.source, t.offset);
    return `line ${line}, column ${column}`;
  }
}

/** Parses Calico selector syntax; the empty selector is all(). Throws SelectorSyntaxError. */
export function parseSelector(text: string): Selector {
  if (text.length > MAX_SELECTOR_LENGTH) {
    throw errorAt(text, MAX_SELECTOR_LENGTH, `selector is longer than ${MAX_SELECTOR_LENGTH} characters`);
  }
  const tree = new Parser(text, tokenize(text)).parse();
  return { text: render(tree), matches: (labels) => evaluate(tree, labels) };
}
