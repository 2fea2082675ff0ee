// Argument checks shared by the backends, so every backend rejects the same malformed input the
// same way instead of, say, etcd reading an empty key as "no key".
import { InvalidRequestError } from '../lib/errors';
import { MAX_TXN_OPS, type TxnOp } from './datastore';

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

/** Checks a commit()'s ops (and each key and revision in them) before any backend acts on them. */
export function requireTxnOps(ops: readonly TxnOp[]): readonly TxnOp[] {
  if (!Array.isArray(ops) || ops.length === 0 || ops.length > MAX_TXN_OPS) {
    throw new InvalidRequestError(`a datastore commit takes 1 to ${MAX_TXN_OPS} operations`);
  }
  const seen = new Set<string>();
  for (const op of ops) {
    requireKey(op.key);
    if (seen.has(op.key)) throw new InvalidRequestError(`datastore commit names key ${op.key} twice`);
    seen.add(op.key);
    switch (op.type) {
      case 'create':
        requireValue(op.value);
        break;
      case 'update':
        requireValue(op.value);
        parseRevision(op.revision);
        break;
      case 'delete':
        if (op.revision !== undefined) parseRevision(op.revision);
        break;
      case 'check':
        parseRevision(op.revision);
        break;
      default:
        throw new InvalidRequestError(`unknown datastore commit operation '${String((op as { type: unknown }).type)}'`);
    }
  }
  return ops;
}

function requireValue(value: string): void {
  if (typeof value !== 'string') throw new InvalidRequestError('datastore value must be a string');
}
