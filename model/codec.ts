// Stored documents are JSON validated on the way in and out with the same decoders as requests,
// so a hand-edited or foreign record is reported with its key instead of crashing a handler.
import type { KeyValue } from '../datastore/datastore';
import { CorruptDataError, InvalidRequestError } from '../lib/errors';
import { decode, type Decoder } from '../lib/validate';

export function parseStored<T>(decoder: Decoder<T>, kv: KeyValue): T {
  let raw: unknown;
  try {
    raw = JSON.parse(kv.value) as unknown;
  } catch {
    throw new CorruptDataError(`datastore key ${kv.key} does not hold JSON`);
  }
  try {
    return decode(decoder, raw);
  } catch (err) {
    if (err instanceof InvalidRequestError) throw new CorruptDataError(`datastore key ${kv.key} is malformed: ${err.message}`);
    throw err;
  }
}

export function serialize(value: object): string {
  return JSON.stringify(value);
}
