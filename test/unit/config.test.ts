import test from 'ava';
import { DEFAULTS, parseConfig } from '../../config/config';
import { ConfigError } from '../../lib/errors';

test('defaults: embedded store, Calico names, default pools', (t) => {
  const c = parseConfig({}, 'host-a');
  t.is(c.nodeName, 'host-a');
  t.is(c.etcd, undefined);
  t.is(c.networkDriverName, 'calico');
  t.is(c.ipamDriverName, 'calico-ipam');
  t.is(c.pluginDir, '/run/docker/plugins');
  t.is(c.dataDir, DEFAULTS.dataDir);
  t.is(c.vethMtu, 1500);
  t.true(c.createProfiles);
  t.is(c.defaultIpv4Pool, '192.168.0.0/16');
  t.is(c.containerIfPrefix, 'eth');
  t.is(c.hostIfPrefix, 'cali');
  t.is(c.defaultIpv4PoolVxlanMode, 'Never');
  t.is(c.vxlanVni, 4096);
  t.is(c.vxlanPort, 4789);
  t.true(c.defaultIpv4PoolNatOutgoing);
  t.true(c.defaultIpv6PoolNatOutgoing);
  t.is(c.sockets, 'split');
  t.is(c.procRoot, '/proc');
  t.true(c.native);
  t.false(parseConfig({ CALICO_NATIVE: 'false' }, 'host-a').native);
});

test('single socket: one plugin name for both interfaces unless the IPAM name is given', (t) => {
  const c = parseConfig({ CALICO_LIBNETWORK_SOCKETS: 'single', CALICO_PROC_ROOT: '/host/proc' }, 'h');
  t.is(c.sockets, 'single');
  t.is(c.networkDriverName, 'calico');
  t.is(c.ipamDriverName, 'calico');
  t.is(c.procRoot, '/host/proc');
  t.is(parseConfig({ CALICO_LIBNETWORK_SOCKETS: 'Single', CALICO_NETWORK_DRIVER_NAME: 'x', CALICO_IPAM_DRIVER_NAME: 'x' }, 'h').ipamDriverName, 'x');
  t.is(parseConfig({ CALICO_LIBNETWORK_SOCKETS: 'split' }, 'h').ipamDriverName, 'calico-ipam');
});

test('outgoing NAT of the default pools: true or false, any case; unset or empty is true', (t) => {
  const parse = (env: Record<string, string>) => {
    const c = parseConfig(env, 'h');
    return [c.defaultIpv4PoolNatOutgoing, c.defaultIpv6PoolNatOutgoing];
  };
  t.deepEqual(parse({ CALICO_IPV4POOL_NAT_OUTGOING: 'false' }), [false, true]);
  t.deepEqual(parse({ CALICO_IPV6POOL_NAT_OUTGOING: 'False' }), [true, false]);
  t.deepEqual(parse({ CALICO_IPV4POOL_NAT_OUTGOING: 'TRUE', CALICO_IPV6POOL_NAT_OUTGOING: ' true ' }), [true, true]);
  t.deepEqual(parse({ CALICO_IPV4POOL_NAT_OUTGOING: '', CALICO_IPV6POOL_NAT_OUTGOING: '' }), [true, true]);
});

test('BGP settings: vxlan by default; bird with its directory and timers', (t) => {
  const d = parseConfig({}, 'h');
  t.is(d.networkingBackend, 'vxlan');
  t.is(d.birdDir, '/run/calico-libnetwork/bird');
  t.deepEqual(d.bgpTimers, { keepaliveSeconds: 20, holdSeconds: 60, connectRetrySeconds: 5 });
  const c = parseConfig({ CALICO_NETWORKING_BACKEND: 'BIRD', CALICO_BIRD_DIR: '/run/b', CALICO_BGP_KEEPALIVE_TIME: '2', CALICO_BGP_HOLD_TIME: '6', CALICO_BGP_CONNECT_RETRY_TIME: '1' }, 'h');
  t.like(c, { networkingBackend: 'bird', birdDir: '/run/b', bgpTimers: { keepaliveSeconds: 2, holdSeconds: 6, connectRetrySeconds: 1 } });
});

test('VXLAN settings', (t) => {
  const c = parseConfig({ CALICO_IPV4POOL_VXLAN: 'CrossSubnet', CALICO_VXLAN_VNI: '16777215', CALICO_VXLAN_PORT: '8472' }, 'h');
  t.is(c.defaultIpv4PoolVxlanMode, 'CrossSubnet');
  t.is(c.vxlanVni, 16_777_215);
  t.is(c.vxlanPort, 8472);
});

test('etcd settings are read and TLS files are kept', (t) => {
  const c = parseConfig({
    ETCD_ENDPOINTS: 'https://10.0.0.1:2379, https://10.0.0.2:2379',
    ETCD_CA_CERT_FILE: '/etc/ca.pem',
    ETCD_CERT_FILE: '/etc/c.pem',
    ETCD_KEY_FILE: '/etc/k.pem',
    ETCD_USERNAME: 'u',
    ETCD_PASSWORD: 'p',
  }, 'h');
  t.deepEqual(c.etcd, {
    endpoints: ['https://10.0.0.1:2379', 'https://10.0.0.2:2379'],
    caFile: '/etc/ca.pem',
    certFile: '/etc/c.pem',
    keyFile: '/etc/k.pem',
    username: 'u',
    password: 'p',
    requestTimeoutMs: 5_000,
  });
});

test('CALICO_DATASTORE_TIMEOUT bounds each etcd operation; invalid values name the variable', (t) => {
  t.is(parseConfig({ ETCD_ENDPOINTS: 'http://127.0.0.1:2379', CALICO_DATASTORE_TIMEOUT: '2' }, 'h').etcd?.requestTimeoutMs, 2_000);
  for (const bad of ['0', '-1', '1.5', 'soon', '301']) {
    const err = t.throws(() => parseConfig({ CALICO_DATASTORE_TIMEOUT: bad }, 'h'), { instanceOf: ConfigError });
    t.regex(err?.message ?? '', /CALICO_DATASTORE_TIMEOUT/);
  }
});

test('pools can be turned off with none', (t) => {
  const c = parseConfig({ CALICO_IPV4POOL_CIDR: 'none', CALICO_IPV6POOL_CIDR: 'NONE' }, 'h');
  t.is(c.defaultIpv4Pool, undefined);
  t.is(c.defaultIpv6Pool, undefined);
});

const invalid: [string, Record<string, string>, RegExp][] = [
  ['MTU not a number', { CALICO_LIBNETWORK_VETH_MTU: 'big' }, /CALICO_LIBNETWORK_VETH_MTU/],
  ['MTU too small', { CALICO_LIBNETWORK_VETH_MTU: '500' }, /CALICO_LIBNETWORK_VETH_MTU must be an integer from 1280/],
  ['bad boolean', { CALICO_LIBNETWORK_CREATE_PROFILES: 'maybe' }, /CALICO_LIBNETWORK_CREATE_PROFILES must be true or false/],
  ['native addon switch', { CALICO_NATIVE: 'sometimes' }, /CALICO_NATIVE must be true or false, got 'sometimes'/],
  ['etcd URL', { ETCD_ENDPOINTS: 'not a url' }, /ETCD_ENDPOINTS must be comma-separated URLs/],
  ['etcd scheme', { ETCD_ENDPOINTS: 'ftp://x:1' }, /ETCD_ENDPOINTS entries must use http/],
  ['credentials in URL', { ETCD_ENDPOINTS: 'http://u:p@x:1' }, /must not carry credentials/],
  ['TLS without etcd', { ETCD_CA_CERT_FILE: '/ca' }, /ETCD_CA_CERT_FILE is set but ETCD_ENDPOINTS is not/],
  ['cert without key', { ETCD_ENDPOINTS: 'http://x:1', ETCD_CERT_FILE: '/c' }, /ETCD_CERT_FILE and ETCD_KEY_FILE/],
  ['user without password', { ETCD_ENDPOINTS: 'http://x:1', ETCD_USERNAME: 'u' }, /ETCD_USERNAME and ETCD_PASSWORD/],
  ['relative data dir', { CALICO_DATA_DIR: 'data' }, /CALICO_DATA_DIR must be an absolute path/],
  ['driver name', { CALICO_NETWORK_DRIVER_NAME: 'Bad Name' }, /CALICO_NETWORK_DRIVER_NAME/],
  ['same names', { CALICO_NETWORK_DRIVER_NAME: 'x', CALICO_IPAM_DRIVER_NAME: 'x' }, /must differ/],
  ['socket mode', { CALICO_LIBNETWORK_SOCKETS: 'both' }, /CALICO_LIBNETWORK_SOCKETS must be one of split, single, got 'both'/],
  ['relative proc root', { CALICO_PROC_ROOT: 'host/proc' }, /CALICO_PROC_ROOT must be an absolute path/],
  ['if prefix', { CALICO_LIBNETWORK_IFPREFIX: 'eth-0-long-prefix' }, /CALICO_LIBNETWORK_IFPREFIX/],
  ['pool', { CALICO_IPV4POOL_CIDR: '10.0.0.0' }, /CALICO_IPV4POOL_CIDR must be a CIDR/],
  ['node name', { NODENAME: 'a b' }, /NODENAME/],
  ['VXLAN mode', { CALICO_IPV4POOL_VXLAN: 'always' }, /CALICO_IPV4POOL_VXLAN must be one of Never, CrossSubnet, Always, got 'always'/],
  ['IPv4 NAT outgoing', { CALICO_IPV4POOL_NAT_OUTGOING: 'yes' }, /CALICO_IPV4POOL_NAT_OUTGOING must be true or false, got 'yes'/],
  ['IPv4 NAT outgoing number', { CALICO_IPV4POOL_NAT_OUTGOING: '0' }, /CALICO_IPV4POOL_NAT_OUTGOING must be true or false, got '0'/],
  ['IPv6 NAT outgoing', { CALICO_IPV6POOL_NAT_OUTGOING: 'off' }, /CALICO_IPV6POOL_NAT_OUTGOING must be true or false, got 'off'/],
  ['VXLAN VNI', { CALICO_VXLAN_VNI: '16777216' }, /CALICO_VXLAN_VNI must be an integer from 1 to 16777215/],
  ['networking backend', { CALICO_NETWORKING_BACKEND: 'calico-bgp' }, /CALICO_NETWORKING_BACKEND must be one of bird, vxlan, none/],
  ['BIRD dir with a quote', { CALICO_BIRD_DIR: '/run/x"y' }, /CALICO_BIRD_DIR must be an absolute path of letters/],
  ['BGP keepalive not below hold', { CALICO_BGP_KEEPALIVE_TIME: '10', CALICO_BGP_HOLD_TIME: '9' }, /keepalive time \(10 s\) must be shorter than hold time/],
  ['VXLAN VNI zero', { CALICO_VXLAN_VNI: '0' }, /CALICO_VXLAN_VNI must be an integer from 1/],
  ['VXLAN port', { CALICO_VXLAN_PORT: '65536' }, /CALICO_VXLAN_PORT must be an integer from 1 to 65535/],
  ['docker host', { DOCKER_HOST: 'tcp://1.2.3.4:2375' }, /DOCKER_HOST must be a unix:\/\/ socket/],
  ['chain prefix', { CALICO_IPTABLES_CHAIN_PREFIX: 'way-too-long-prefix' }, /CALICO_IPTABLES_CHAIN_PREFIX/],
  ['interface prefix too long', { CALICO_INTERFACE_PREFIX: 'calico' }, /CALICO_INTERFACE_PREFIX must be one to four/],
];

for (const [name, env, message] of invalid) {
  test(`invalid config names the variable: ${name}`, (t) => {
    const err = t.throws(() => parseConfig(env, 'h'), { instanceOf: ConfigError });
    t.regex(err.message, message);
  });
}
