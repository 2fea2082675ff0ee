// Argument checks shared by the backends, so every backend rejects the same malformed input the
// same way instead of, say, etcd reading an empty key as "no key".
import { InvalidRequestError } from '../lib/errors';

export function requireKey(key: string): string {
  if (typeof key !== 'string' || key === '') throw new InvalidRequestError('datastore key must be a non-empty string');
  return key;
}

export function requirePrefix(prefix: string): string {
  if (typeof prefix !== 'string') throw new InvalidRequestError('datastore prefix must be a string');
  return prefix;
}

export function parseRevision(revision: string): bigint {
  if (typeof revision !== 'string' || !/^\d{1,19}$/.test(revision)) {
    throw new InvalidRequestError(`datastore revision must be a decimal integer string, got '${String(revision)}'`);
  }
  return BigInt(revision);
}
