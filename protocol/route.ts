// One plugin method: its name and a handler behind its decoder. Apart from the server
// (plugin-server.ts), so that what declares routes (the drivers), and what merely imports their
// names (calicoctl), does not load the HTTP stack.
import { decode, type Decoder } from '../lib/validate';

export interface Route {
  readonly method: string;
  handle(body: unknown): Promise<object>;
}

/** Binds a decoder to a handler so each method is declared once, fully typed. */
export function route<T>(method: string, decoder: Decoder<T> | null, handler: (req: T) => Promise<object> | object): Route {
  return {
    method,
    async handle(body) {
      const req = decoder === null ? (undefined as T) : decode(decoder, body);
      return handler(req);
    },
  };
}
