// What every calicoctl command gets: the datastore, the allocator, the output format and flags.
import type { Datastore } from '../datastore/datastore';
import type { Keys } from '../datastore/keys';
import type { Allocator } from '../ipam/allocator';
import { InvalidRequestError } from '../lib/errors';
import type { OutputFormat } from './output';

export interface CliIo {
  out(text: string): void;
  /** Standard input, for `apply -f -`. */
  readStdin(): Promise<string>;
}

export interface Flags {
  readonly disabled: boolean;
  readonly natOutgoing: boolean;
  readonly force: boolean;
  readonly blockSize?: string;
  readonly vxlanMode?: string;
  readonly filename?: string;
  readonly protocol?: string;
  readonly port?: string;
  readonly srcPort?: string;
  readonly icmpType?: string;
  readonly icmpCode?: string;
  /** ipam release --ip */
  readonly ip?: string;
  /** ipam release --from-report */
  readonly fromReport?: string;
  readonly as?: string;
  readonly node?: string;
  readonly mesh?: string;
  readonly routeReflector?: string;
}

export interface Context {
  readonly store: Datastore;
  readonly keys: Keys;
  readonly allocator: Allocator;
  readonly format: OutputFormat;
  readonly io: CliIo;
  readonly flags: Flags;
  /** CALICO_RECONCILE_GRACE: how old an allocation without endpoint must be to count as leaked. */
  readonly graceMs: number;
  /** This host's BIRD directory (CALICO_BIRD_DIR), for `node status`. */
  readonly birdDir: string;
}

/** Resolves to the exit code when it is not 0 (a check that found something). */
export type Handler = (ctx: Context, args: string[]) => Promise<void | number>;

export function exactArgs(args: string[], n: number, usage: string): void {
  if (args.length !== n) throw new InvalidRequestError(`usage: calicoctl ${usage}`);
}

export function intFlag(value: string | undefined, name: string, min: number, max: number): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isInteger(n) || n < min || n > max) throw new InvalidRequestError(`${name} must be an integer from ${min} to ${max}, got '${value}'`);
  return n;
}
