// Logging goes through the `debug` package (DEBUG=calico:* turns it on). Info, warnings and errors
// are always printed: an operator must see them without knowing the debug namespaces.
import createDebug from 'debug';

export interface Logger {
  debug(fmt: string, ...args: unknown[]): void;
  info(fmt: string, ...args: unknown[]): void;
  warn(fmt: string, ...args: unknown[]): void;
  error(fmt: string, ...args: unknown[]): void;
}

export function logger(component: string): Logger {
  const d = createDebug(`calico:${component}`);
  const always = createDebug(`calico:${component}`);
  always.enabled = true;
  return {
    debug: (fmt, ...args) => d(fmt, ...args),
    info: (fmt, ...args) => always(fmt, ...args),
    warn: (fmt, ...args) => always(`WARNING ${fmt}`, ...args),
    error: (fmt, ...args) => always(`ERROR ${fmt}`, ...args),
  };
}
