// The multi-host harness: N simulated hosts on one machine, each with its own network, mount and
// UTS namespaces, dockerd and plugin, on a two-subnet fabric with a router, sharing one etcd.
// The pieces live in ./multihost/ (cluster.ts: the entry point and teardown; fabric.ts: the
// network; host.ts: one host; host-plugin.ts: its plugin; ns-exec.ts: running commands inside;
// procs.ts: finding and killing a host's processes, and the "nothing left" checks; reap.ts:
// clusters of test processes that were killed).
export {
  CLUSTER_BASE_DIR,
  ClusterStartError,
  DEFAULT_DOCKERD_ARGS,
  DEFAULT_IPV4_POOL,
  startCluster,
  type Cluster,
  type ClusterEtcd,
  type ClusterOptions,
  type NetnsHandle,
  type Outside,
  type Router,
  type StopOptions,
} from './multihost/cluster.js';
export { ETCD_ADDRESS, OUTSIDE, SUBNETS, type Subnet } from './multihost/fabric.js';
export type { Host } from './multihost/host.js';
export type { HostPlugin } from './multihost/host-plugin.js';
export { NsExecError, type NsExecOptions, type NsExecResult } from './multihost/ns-exec.js';
export { leftoversOf, reapOrphans } from './multihost/reap.js';
