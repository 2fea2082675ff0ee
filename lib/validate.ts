// A small schema checker for JSON: Docker's request bodies (protocol/) and stored documents
// (model/). Both are simple (strings, booleans, maps, arrays of small objects), so a few composable
// decoders are clearer than a schema library, and they produce typed values plus an error that
// names the offending field.
import { InvalidRequestError } from './errors';

export type Decoder<T> = (value: unknown, path: string) => T;

function fail(path: string, expected: string, value: unknown): never {
  const got = value === null ? 'null' : Array.isArray(value) ? 'array' : typeof value;
  throw new InvalidRequestError(`${path} must be ${expected}, got ${got}`);
}

export const str: Decoder<string> = (v, path) => (typeof v === 'string' ? v : fail(path, 'a string', v));
export const bool: Decoder<boolean> = (v, path) => (typeof v === 'boolean' ? v : fail(path, 'a boolean', v));
export const num: Decoder<number> = (v, path) => (typeof v === 'number' && Number.isFinite(v) ? v : fail(path, 'a number', v));
export const unknownValue: Decoder<unknown> = (v) => v;

/** Absent or null both decode to undefined: Docker sends null for empty maps (e.g. Options). */
export function optional<T>(d: Decoder<T>): Decoder<T | undefined> {
  return (v, path) => (v === undefined || v === null ? undefined : d(v, path));
}

export function withDefault<T>(d: Decoder<T>, fallback: T): Decoder<T> {
  return (v, path) => (v === undefined || v === null ? fallback : d(v, path));
}

export function array<T>(d: Decoder<T>): Decoder<T[]> {
  return (v, path) => (Array.isArray(v) ? v.map((item, i) => d(item, `${path}[${i}]`)) : fail(path, 'an array', v));
}

export function record<T>(d: Decoder<T>): Decoder<Record<string, T>> {
  return (v, path) => {
    if (typeof v !== 'object' || v === null || Array.isArray(v)) fail(path, 'an object', v);
    const out: Record<string, T> = {};
    // Defined, not assigned: a `__proto__` key (JSON.parse makes it an own field) would otherwise
    // replace the map's prototype, vanish from its keys and lend it fields the request never had.
    for (const [k, item] of Object.entries(v)) Object.defineProperty(out, k, { value: d(item, `${path}.${k}`), enumerable: true, writable: true, configurable: true });
    return out;
  };
}

type Shape = Record<string, Decoder<unknown>>;
type OptionalKeys<S extends Shape> = { [K in keyof S]: undefined extends ReturnType<S[K]> ? K : never }[keyof S];
type Flatten<T> = { [K in keyof T]: T[K] };
/** Fields whose decoder may yield undefined become optional properties. */
export type Decoded<S extends Shape> = Flatten<
  { [K in Exclude<keyof S, OptionalKeys<S>>]: ReturnType<S[K]> } & { [K in OptionalKeys<S>]?: ReturnType<S[K]> }
>;

/** Fields not in the shape are ignored: Docker adds fields across versions. */
export function object<S extends Shape>(shape: S): Decoder<Decoded<S>> {
  return (v, path) => {
    if (typeof v !== 'object' || v === null || Array.isArray(v)) fail(path, 'an object', v);
    const src = v as Record<string, unknown>;
    const out: Record<string, unknown> = {};
    for (const [key, decoder] of Object.entries(shape)) {
      const value = decoder(src[key], path === '' ? key : `${path}.${key}`);
      if (value !== undefined) out[key] = value;
    }
    return out as Decoded<S>;
  };
}

/** A required non-empty string matching a pattern; `what` tells the user what was expected. */
export function pattern(re: RegExp, what: string): Decoder<string> {
  return (v, path) => {
    const s = str(v, path);
    if (!re.test(s)) throw new InvalidRequestError(`${path} must be ${what}, got '${s.length > 80 ? `${s.slice(0, 80)}...` : s}'`);
    return s;
  };
}

export function decode<T>(d: Decoder<T>, value: unknown): T {
  return d(value, '');
}
