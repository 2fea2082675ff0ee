// Where the health and metrics listener binds (CALICO_HEALTH_LISTEN): `host:port` (IPv6 as
// `[addr]:port`), or `none`. It answers anyone who can reach it, so it binds to loopback unless the
// operator also sets CALICO_HEALTH_ALLOW_REMOTE=true: a typo must not publish the plugin's metrics.
import { isIP } from 'node:net';
import { ConfigError } from '../lib/errors';

export interface ListenAddress {
  /** An IP address or `localhost`. */
  readonly host: string;
  /** 1-65535. */
  readonly port: number;
}

export const DEFAULT_HEALTH_LISTEN = '127.0.0.1:9099';

export function isLoopback(host: string): boolean {
  if (host === 'localhost') return true;
  if (isIP(host) === 4) return host.startsWith('127.');
  if (isIP(host) === 6) return host === '::1' || /^(0{0,4}:){7}0{0,3}1$/.test(host) || /^::ffff:127\./i.test(host);
  return false;
}

/** undefined: the listener is off (`none`). Throws ConfigError naming the variable. */
export function parseHealthListen(raw: string | undefined, allowRemote: boolean, name = 'CALICO_HEALTH_LISTEN'): ListenAddress | undefined {
  const v = (raw ?? '').trim() === '' ? DEFAULT_HEALTH_LISTEN : (raw ?? '').trim();
  if (v.toLowerCase() === 'none') return undefined;
  const m = /^\[([0-9A-Fa-f:.]+)\]:(\d{1,5})$/.exec(v) ?? /^([^:[\]\s]+):(\d{1,5})$/.exec(v);
  const host = m?.[1];
  const port = Number(m?.[2]);
  const bad = `${name} must be host:port such as ${DEFAULT_HEALTH_LISTEN} or [::1]:9099 (or 'none'), got '${v}'`;
  if (host === undefined || !Number.isInteger(port) || port < 1 || port > 65_535) throw new ConfigError(bad);
  const bracketed = v.startsWith('[');
  if (bracketed ? isIP(host) !== 6 : host !== 'localhost' && isIP(host) !== 4) throw new ConfigError(bad);
  if (!allowRemote && !isLoopback(host)) {
    throw new ConfigError(`${name} is '${v}', not a loopback address: health and metrics would be reachable from other hosts; set CALICO_HEALTH_ALLOW_REMOTE=true to allow it`);
  }
  return { host, port };
}
