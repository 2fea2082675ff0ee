// A Datastore that reports each failed operation (metrics: datastore errors) and otherwise
// behaves exactly like the one it wraps. A CAS conflict is an answer, not an error: only
// rejections and broken watches count.
import type { Datastore, KeyValue, ListResult, TxnOp, Watch, WatchHandlers, WatchOptions } from '../datastore/datastore';

export function observedDatastore(inner: Datastore, onError: (operation: string) => void): Datastore {
  const observe = <T>(operation: string, p: Promise<T>): Promise<T> =>
    p.catch((err: unknown) => {
      onError(operation);
      throw err;
    });
  return {
    description: inner.description,
    get: (key: string): Promise<KeyValue | undefined> => observe('get', inner.get(key)),
    list: (prefix: string): Promise<ListResult> => observe('list', inner.list(prefix)),
    create: (key: string, value: string) => observe('create', inner.create(key, value)),
    update: (key: string, value: string, revision: string) => observe('update', inner.update(key, value, revision)),
    delete: (key: string, revision?: string) => observe('delete', inner.delete(key, revision)),
    commit: (ops: readonly TxnOp[]) => observe('commit', inner.commit(ops)),
    watch: (prefix: string, handlers: WatchHandlers, options?: WatchOptions): Promise<Watch> =>
      observe('watch', inner.watch(prefix, {
        onEvent: (event) => handlers.onEvent(event),
        onError: (err) => {
          onError('watch');
          handlers.onError(err);
        },
      }, options)),
    close: () => inner.close(),
  };
}
