// A host running the plugin. Registered at start so operators (and, later, peers distributing
// routes) can see which hosts exist and which blocks they own.
import { object, str } from '../lib/validate';

export const Node = object({
  name: str,
  version: str,
  datastore: str,
  startedAt: str,
});
export type Node = ReturnType<typeof Node>;
