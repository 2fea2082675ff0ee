// Configuration comes from the environment, with the names Calico users already know where Calico
// had one. parseConfig is pure (env in, Config out) so every rule is unit-testable; invalid values
// fail at start with a ConfigError naming the variable.
import { hostname } from 'node:os';
import { isAbsolute } from 'node:path';
import { ConfigError, errorMessage } from '../lib/errors';
import { VXLAN_MODES, type VxlanMode, isVxlanMode } from '../ipam/pool';
import { assertPolicyPrefix } from '../policy/names';
import { type HostAddressSetting, parseHostAddressSetting } from './host-address';
import { type ListenAddress, parseHealthListen } from './health-listen';
import { NETWORKING_BACKENDS, type NetworkingBackend } from '../bgp/backend';
import { type BirdTimers, DEFAULT_TIMERS, validTimers } from '../bgp/bird-config';

export interface EtcdConfig {
  readonly endpoints: string[];
  readonly caFile?: string;
  readonly certFile?: string;
  readonly keyFile?: string;
  readonly username?: string;
  readonly password?: string;
  /** Bound of each datastore operation (CALICO_DATASTORE_TIMEOUT): an unreachable or hung etcd
   * fails a Docker request with a datastore error within about this. */
  readonly requestTimeoutMs: number;
}

/** `split`: one socket per interface, named after each driver (the legacy plugin Docker finds in
 * /run/docker/plugins). `single`: one socket serving both, as a managed (v2) plugin has. */
export type SocketMode = 'split' | 'single';
export const SOCKET_MODES: readonly SocketMode[] = ['split', 'single'];

export interface Config {
  readonly nodeName: string;
  /** Absent: the embedded store under dataDir. */
  readonly etcd?: EtcdConfig;
  readonly dataDir: string;
  readonly datastorePrefix: string;
  readonly pluginDir: string;
  readonly networkDriverName: string;
  readonly ipamDriverName: string;
  /** split: `<networkDriverName>.sock` and `<ipamDriverName>.sock`; single: both interfaces on
   * `<networkDriverName>.sock` (CALICO_LIBNETWORK_SOCKETS). */
  readonly sockets: SocketMode;
  /** The NetworkDriver's scope (CALICO_LIBNETWORK_SCOPE): `local` serves an engine's own networks;
   * `global` serves swarm-scoped networks, whose addresses the swarm manager allocates. Docker
   * 20.10 lets one plugin serve only one of the two. */
  readonly scope: 'local' | 'global';
  /** Where the host's /proc is seen (CALICO_PROC_ROOT): sysctls of the host namespace are written
   * under `<procRoot>/sys`. A managed plugin's own /proc/sys is read-only. */
  readonly procRoot: string;
  /** Prefix of the host ends of the veths (`cali`): with 11 characters of the endpoint ID it
   * makes the interface name, and policy matches `<prefix>+`. */
  readonly hostIfPrefix: string;
  /** Prefix Docker gives the container-side interface (DstPrefix): 'eth' → eth0. */
  readonly containerIfPrefix: string;
  readonly vethMtu: number;
  readonly createProfiles: boolean;
  readonly labelEndpoints: boolean;
  /** Use the native addon (rtnetlink, posix_spawn) when it is built. */
  readonly native: boolean;
  /** Pools created on first start when no pool of that family exists; undefined: none. */
  readonly defaultIpv4Pool?: string;
  readonly defaultIpv6Pool?: string;
  /** Names our iptables chains (<prefix>-FORWARD, ...), so test instances never collide. */
  readonly iptablesChainPrefix: string;
  /** Docker API socket, used to look up network names and container labels. */
  readonly dockerSocket: string;
  /** This host's addresses between hosts (IP / IP6 and their autodetection methods). */
  readonly hostIpv4: HostAddressSetting;
  readonly hostIpv6: HostAddressSetting;
  /** Routing protocol number that marks the routes the agent writes (ip route ... proto N). */
  readonly routeProtocol: number;
  /** vxlanMode of the default IPv4 pool (CALICO_IPV4POOL_VXLAN), validated with the pool. */
  readonly defaultIpv4PoolVxlanMode: VxlanMode;
  /** natOutgoing of the default pools when they are created (CALICO_IPV4POOL_NAT_OUTGOING,
   * CALICO_IPV6POOL_NAT_OUTGOING; Calico's default: true). Existing pools keep theirs. */
  readonly defaultIpv4PoolNatOutgoing: boolean;
  readonly defaultIpv6PoolNatOutgoing: boolean;
  /** This host's VXLAN device: VNI and UDP port (Calico's defaults 4096 and 4789). */
  readonly vxlanVni: number;
  readonly vxlanPort: number;
  /** Health and metrics listener (CALICO_HEALTH_LISTEN); undefined: off. */
  readonly healthListen?: ListenAddress;
  /** Between reconcile passes (CALICO_RECONCILE_INTERVAL, seconds): endpoint records, veths and
   * addresses left behind by a crash are removed (workload/reconciler.ts). */
  readonly reconcileIntervalMs: number;
  /** How old an allocation or endpoint record must be before the reconciler takes it as left
   * behind rather than a request in flight (CALICO_RECONCILE_GRACE, seconds). */
  readonly reconcileGraceMs: number;
  /** How container routes cross between hosts (CALICO_NETWORKING_BACKEND, Calico's names): `vxlan`
   * (routes and VXLAN from the datastore, the default), `bird` (BGP through this host's BIRD),
   * `none`. */
  readonly networkingBackend: NetworkingBackend;
  /** BIRD's configuration, control socket, pid file and log (CALICO_BIRD_DIR). */
  readonly birdDir: string;
  /** BGP timers (CALICO_BGP_KEEPALIVE_TIME, CALICO_BGP_HOLD_TIME, CALICO_BGP_CONNECT_RETRY_TIME,
   * seconds). */
  readonly bgpTimers: BirdTimers;
}

export const DEFAULTS = {
  dataDir: '/var/lib/calico-libnetwork',
  datastorePrefix: '/calico/libnetwork/v1',
  pluginDir: '/run/docker/plugins',
  procRoot: '/proc',
  networkDriverName: 'calico',
  ipamDriverName: 'calico-ipam',
  containerIfPrefix: 'eth',
  vethMtu: 1500,
  ipv4Pool: '192.168.0.0/16',
  ipv6Pool: 'fd80:24e2:f998:72d6::/64',
  dockerSocket: '/var/run/docker.sock',
  /** Not one of the kernel's own (0-4) nor a routing daemon's in /etc/iproute2/rt_protos. */
  routeProtocol: 80,
  vxlanVni: 4096,
  vxlanPort: 4789,
  reconcileIntervalSeconds: 300,
  reconcileGraceSeconds: 60,
  datastoreTimeoutSeconds: 5,
  birdDir: '/run/calico-libnetwork/bird',
} as const;

type Env = Readonly<Record<string, string | undefined>>;

const DRIVER_NAME = /^[a-z0-9][a-z0-9._-]{0,62}$/;
// 4 + 11 characters of the endpoint ID = 15, the kernel's limit for interface names.
const HOST_IF_PREFIX = /^[a-z][a-z0-9]{0,3}$/;
const IF_PREFIX = /^[a-z][a-z0-9]{0,9}$/;
// Node names end up in datastore keys and in owner records; keep them DNS-like.
export const NODE_NAME = /^[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$/;
const PREFIX = /^(\/[A-Za-z0-9._-]+)+$/;

function value(env: Env, name: string): string | undefined {
  const v = env[name]?.trim();
  return v === undefined || v === '' ? undefined : v;
}

function bool(env: Env, name: string, fallback: boolean): boolean {
  const v = value(env, name)?.toLowerCase();
  if (v === undefined) return fallback;
  if (['true', '1', 'yes', 'on'].includes(v)) return true;
  if (['false', '0', 'no', 'off'].includes(v)) return false;
  throw new ConfigError(`${name} must be true or false, got '${env[name]}'`);
}

function matching(env: Env, name: string, re: RegExp, fallback: string, what: string): string {
  const v = value(env, name) ?? fallback;
  if (!re.test(v)) throw new ConfigError(`${name} must be ${what}, got '${v}'`);
  return v;
}

function absolutePath(env: Env, name: string, fallback?: string): string | undefined {
  const v = value(env, name) ?? fallback;
  if (v !== undefined && !isAbsolute(v)) throw new ConfigError(`${name} must be an absolute path, got '${v}'`);
  return v;
}

function poolCidr(env: Env, name: string, fallback: string): string | undefined {
  const v = value(env, name) ?? fallback;
  // 'none' lets an operator start without a default pool and add pools with calicoctl.
  if (v.toLowerCase() === 'none') return undefined;
  if (!/^[0-9a-fA-F:.]+\/\d{1,3}$/.test(v)) throw new ConfigError(`${name} must be a CIDR such as ${fallback} (or 'none'), got '${v}'`);
  return v;
}

function etcdConfig(env: Env): EtcdConfig | undefined {
  const raw = value(env, 'ETCD_ENDPOINTS');
  // Validated even without etcd, so a typo fails at start rather than when etcd is configured.
  const requestTimeoutMs = 1000 * integer(env, 'CALICO_DATASTORE_TIMEOUT', DEFAULTS.datastoreTimeoutSeconds, 1, 300);
  if (raw === undefined) {
    for (const n of ['ETCD_CA_CERT_FILE', 'ETCD_CERT_FILE', 'ETCD_KEY_FILE', 'ETCD_USERNAME', 'ETCD_PASSWORD']) {
      if (value(env, n) !== undefined) throw new ConfigError(`${n} is set but ETCD_ENDPOINTS is not: set ETCD_ENDPOINTS to use etcd`);
    }
    return undefined;
  }
  const endpoints = raw.split(',').map((s) => s.trim()).filter((s) => s !== '');
  for (const e of endpoints) {
    let url: URL;
    try {
      url = new URL(e);
    } catch {
      throw new ConfigError(`ETCD_ENDPOINTS must be comma-separated URLs such as http://127.0.0.1:2379, got '${e}'`);
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') {
      throw new ConfigError(`ETCD_ENDPOINTS entries must use http:// or https://, got '${e}'`);
    }
    if (url.username !== '' || url.password !== '') {
      throw new ConfigError('ETCD_ENDPOINTS must not carry credentials: use ETCD_USERNAME and ETCD_PASSWORD');
    }
  }
  if (endpoints.length === 0) throw new ConfigError('ETCD_ENDPOINTS is set but lists no endpoint');
  const certFile = absolutePath(env, 'ETCD_CERT_FILE');
  const keyFile = absolutePath(env, 'ETCD_KEY_FILE');
  if ((certFile === undefined) !== (keyFile === undefined)) {
    throw new ConfigError('ETCD_CERT_FILE and ETCD_KEY_FILE must be set together');
  }
  const username = value(env, 'ETCD_USERNAME');
  const password = env['ETCD_PASSWORD'];
  if ((username === undefined) !== (password === undefined || password === '')) {
    throw new ConfigError('ETCD_USERNAME and ETCD_PASSWORD must be set together');
  }
  return {
    endpoints,
    requestTimeoutMs,
    ...(absolutePath(env, 'ETCD_CA_CERT_FILE') !== undefined && { caFile: absolutePath(env, 'ETCD_CA_CERT_FILE') }),
    ...(certFile !== undefined && { certFile, keyFile }),
    ...(username !== undefined && { username, password }),
  };
}

function mtu(env: Env): number {
  const raw = value(env, 'CALICO_LIBNETWORK_VETH_MTU');
  if (raw === undefined) return DEFAULTS.vethMtu;
  const n = Number(raw);
  // 1280 is the IPv6 minimum; 9000 covers jumbo frames with room for encapsulation later.
  if (!Number.isInteger(n) || n < 1280 || n > 65535) {
    throw new ConfigError(`CALICO_LIBNETWORK_VETH_MTU must be an integer from 1280 to 65535, got '${raw}'`);
  }
  return n;
}

/** The policy engine owns the rule for chain prefixes (chain names are at most 28 characters). */
function chainPrefix(env: Env): string {
  try {
    return assertPolicyPrefix(value(env, 'CALICO_IPTABLES_CHAIN_PREFIX') ?? 'cali');
  } catch (err) {
    throw new ConfigError(`CALICO_IPTABLES_CHAIN_PREFIX: ${errorMessage(err)}`);
  }
}

function dockerSocket(env: Env): string {
  const host = value(env, 'DOCKER_HOST');
  if (host === undefined) return DEFAULTS.dockerSocket;
  if (!host.startsWith('unix://')) throw new ConfigError(`DOCKER_HOST must be a unix:// socket, got '${host}'`);
  const path = host.slice('unix://'.length);
  if (!isAbsolute(path)) throw new ConfigError(`DOCKER_HOST must name an absolute socket path, got '${host}'`);
  return path;
}

export function parseConfig(env: Env, defaultNodeName: string = hostname()): Config {
  const etcd = etcdConfig(env);
  const sockets = socketMode(env);
  const networkDriverName = matching(env, 'CALICO_NETWORK_DRIVER_NAME', DRIVER_NAME, DEFAULTS.networkDriverName, 'a lower-case plugin name');
  // One socket is one plugin: Docker calls both interfaces by the plugin's name.
  const ipamDriverName = matching(env, 'CALICO_IPAM_DRIVER_NAME', DRIVER_NAME, sockets === 'single' ? networkDriverName : DEFAULTS.ipamDriverName, 'a lower-case plugin name');
  if (sockets === 'split' && networkDriverName === ipamDriverName) {
    throw new ConfigError(`CALICO_NETWORK_DRIVER_NAME and CALICO_IPAM_DRIVER_NAME must differ (both '${ipamDriverName}')`);
  }
  const defaultIpv4Pool = poolCidr(env, 'CALICO_IPV4POOL_CIDR', DEFAULTS.ipv4Pool);
  const defaultIpv6Pool = poolCidr(env, 'CALICO_IPV6POOL_CIDR', DEFAULTS.ipv6Pool);
  const healthListen = parseHealthListen(env['CALICO_HEALTH_LISTEN'], bool(env, 'CALICO_HEALTH_ALLOW_REMOTE', false));
  return {
    nodeName: matching(env, 'NODENAME', NODE_NAME, defaultNodeName, 'a host name (letters, digits, . _ -)'),
    ...(etcd !== undefined && { etcd }),
    dataDir: absolutePath(env, 'CALICO_DATA_DIR', DEFAULTS.dataDir) ?? DEFAULTS.dataDir,
    datastorePrefix: matching(env, 'CALICO_DATASTORE_PREFIX', PREFIX, DEFAULTS.datastorePrefix, "a key prefix such as '/calico/libnetwork/v1'"),
    pluginDir: absolutePath(env, 'CALICO_PLUGIN_DIR', DEFAULTS.pluginDir) ?? DEFAULTS.pluginDir,
    networkDriverName,
    ipamDriverName,
    sockets,
    scope: scope(env),
    procRoot: absolutePath(env, 'CALICO_PROC_ROOT', DEFAULTS.procRoot) ?? DEFAULTS.procRoot,
    hostIfPrefix: matching(env, 'CALICO_INTERFACE_PREFIX', HOST_IF_PREFIX, 'cali', 'one to four lower-case letters or digits, starting with a letter (interface names are at most 15 characters)'),
    containerIfPrefix: matching(env, 'CALICO_LIBNETWORK_IFPREFIX', IF_PREFIX, DEFAULTS.containerIfPrefix, 'a short lower-case interface prefix such as eth'),
    vethMtu: mtu(env),
    createProfiles: bool(env, 'CALICO_LIBNETWORK_CREATE_PROFILES', true),
    labelEndpoints: bool(env, 'CALICO_LIBNETWORK_LABEL_ENDPOINTS', true),
    native: bool(env, 'CALICO_NATIVE', true),
    ...(defaultIpv4Pool !== undefined && { defaultIpv4Pool }),
    ...(defaultIpv6Pool !== undefined && { defaultIpv6Pool }),
    iptablesChainPrefix: chainPrefix(env),
    dockerSocket: dockerSocket(env),
    hostIpv4: parseHostAddressSetting(env, 4),
    hostIpv6: parseHostAddressSetting(env, 6),
    routeProtocol: integer(env, 'CALICO_ROUTE_PROTOCOL', DEFAULTS.routeProtocol, 5, 255),
    defaultIpv4PoolVxlanMode: vxlanMode(env),
    defaultIpv4PoolNatOutgoing: natOutgoing(env, 'CALICO_IPV4POOL_NAT_OUTGOING'),
    defaultIpv6PoolNatOutgoing: natOutgoing(env, 'CALICO_IPV6POOL_NAT_OUTGOING'),
    vxlanVni: integer(env, 'CALICO_VXLAN_VNI', DEFAULTS.vxlanVni, 1, 16_777_215),
    vxlanPort: integer(env, 'CALICO_VXLAN_PORT', DEFAULTS.vxlanPort, 1, 65_535),
    ...(healthListen !== undefined && { healthListen }),
    reconcileIntervalMs: 1000 * integer(env, 'CALICO_RECONCILE_INTERVAL', DEFAULTS.reconcileIntervalSeconds, 1, 86_400),
    reconcileGraceMs: 1000 * integer(env, 'CALICO_RECONCILE_GRACE', DEFAULTS.reconcileGraceSeconds, 1, 86_400),
    networkingBackend: networkingBackend(env),
    birdDir: birdDir(env),
    bgpTimers: bgpTimers(env),
  };
}

function networkingBackend(env: Env): NetworkingBackend {
  const v = (value(env, 'CALICO_NETWORKING_BACKEND') ?? 'vxlan').toLowerCase();
  const b = NETWORKING_BACKENDS.find((x) => x === v);
  if (b === undefined) throw new ConfigError(`CALICO_NETWORKING_BACKEND must be one of ${NETWORKING_BACKENDS.join(', ')}, got '${env['CALICO_NETWORKING_BACKEND'] ?? ''}'`);
  return b;
}

/** Rendered into BIRD's configuration (its log file): a plain path only. */
function birdDir(env: Env): string {
  const v = absolutePath(env, 'CALICO_BIRD_DIR', DEFAULTS.birdDir) ?? DEFAULTS.birdDir;
  if (!/^\/[A-Za-z0-9._/-]{1,150}$/.test(v)) throw new ConfigError(`CALICO_BIRD_DIR must be an absolute path of letters, digits and . _ - /, got '${v}'`);
  return v;
}

function bgpTimers(env: Env): BirdTimers {
  const timers = {
    keepaliveSeconds: integer(env, 'CALICO_BGP_KEEPALIVE_TIME', DEFAULT_TIMERS.keepaliveSeconds, 1, 65_535),
    holdSeconds: integer(env, 'CALICO_BGP_HOLD_TIME', DEFAULT_TIMERS.holdSeconds, 3, 65_535),
    connectRetrySeconds: integer(env, 'CALICO_BGP_CONNECT_RETRY_TIME', DEFAULT_TIMERS.connectRetrySeconds, 1, 65_535),
  };
  try {
    return validTimers(timers);
  } catch (err) {
    throw new ConfigError(`CALICO_BGP_KEEPALIVE_TIME / CALICO_BGP_HOLD_TIME: ${errorMessage(err)}`);
  }
}

function socketMode(env: Env): SocketMode {
  const v = (value(env, 'CALICO_LIBNETWORK_SOCKETS') ?? 'split').toLowerCase();
  const mode = SOCKET_MODES.find((m) => m === v);
  if (mode === undefined) throw new ConfigError(`CALICO_LIBNETWORK_SOCKETS must be one of ${SOCKET_MODES.join(', ')}, got '${env['CALICO_LIBNETWORK_SOCKETS'] ?? ''}'`);
  return mode;
}

function scope(env: Env): 'local' | 'global' {
  const v = (value(env, 'CALICO_LIBNETWORK_SCOPE') ?? 'local').toLowerCase();
  if (v !== 'local' && v !== 'global') throw new ConfigError(`CALICO_LIBNETWORK_SCOPE must be local or global, got '${env['CALICO_LIBNETWORK_SCOPE'] ?? ''}'`);
  return v;
}

function vxlanMode(env: Env): VxlanMode {
  const v = value(env, 'CALICO_IPV4POOL_VXLAN') ?? 'Never';
  if (!isVxlanMode(v)) throw new ConfigError(`CALICO_IPV4POOL_VXLAN must be one of ${VXLAN_MODES.join(', ')}, got '${v}'`);
  return v;
}

/** Calico's spelling: `true` or `false` (any case); unset means true. Unlike the other booleans,
 * no 1/yes/on: a pool flag should read the same here as in Calico's manifests. */
function natOutgoing(env: Env, name: string): boolean {
  const v = value(env, name) ?? 'true';
  if (v.toLowerCase() === 'true') return true;
  if (v.toLowerCase() === 'false') return false;
  throw new ConfigError(`${name} must be true or false, got '${v}'`);
}

function integer(env: Env, name: string, fallback: number, min: number, max: number): number {
  const v = value(env, name);
  if (v === undefined) return fallback;
  if (!/^\d{1,8}$/.test(v) || Number(v) < min || Number(v) > max) throw new ConfigError(`${name} must be an integer from ${min} to ${max}, got '${v}'`);
  return Number(v);
}
