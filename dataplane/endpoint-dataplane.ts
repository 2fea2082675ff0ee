// What the network driver needs from the kernel, as an interface: the driver decides *what* an
// endpoint looks like, the Linux adapter (linux-endpoint-dataplane.ts) does it.

export interface VethSpec {
  readonly hostIf: string;
  /** Container end's name while it is still in the host namespace; Docker renames it. */
  readonly peerIf: string;
  readonly mtu: number;
  /** Bare container addresses; each gets a /32 or /128 route to hostIf. */
  readonly ipv4: string[];
  readonly ipv6: string[];
  /** The workload's interface number, which picks its gateways (veth.ts workloadGateways). */
  readonly gatewayIndex: number;
}

export interface AttachedVeth {
  /** The host end's fe80:: address for this interface number: the container's IPv6 gateway (set
   * when ipv6 is non-empty). */
  readonly ipv6Gateway?: string;
}

export interface EndpointDataplane {
  /** Creates the veth and host routes. All-or-nothing: on failure nothing is left behind. */
  attach(spec: VethSpec): Promise<AttachedVeth>;
  /** Removes the veth and its routes; succeeds when they are already gone. Resolves once the
   * kernel no longer routes through it and its name is free (so its addresses may be handed out
   * again); the kernel may still be finishing the deletion, which settled() waits for. */
  detach(hostIf: string): Promise<void>;
  /** Starts removing the veth without waiting for it; attach and detach of the same interface
   * wait for it. */
  startDetach(hostIf: string): void;
  /** Resolves when every removal started so far has finished (shutdown, tests). */
  settled(): Promise<void>;
}
