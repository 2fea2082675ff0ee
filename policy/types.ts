// The policy model as the agent and calicoctl use it in memory: parsed, validated, normalized.
// Stored and user-facing documents use Calico's resource shape (kind: Profile, metadata, spec);
// policy/profile-resource.ts converts between the two.

export type Action = 'allow' | 'deny' | 'log';

/** Named protocols, or an IP protocol number 1-255. */
export type Protocol = 'tcp' | 'udp' | 'icmp' | 'icmpv6' | 'sctp' | number;

/** An inclusive port range; a single port has from === to. */
export interface PortRange {
  readonly from: number;
  readonly to: number;
}

export interface IcmpMatch {
  readonly type: number;
  readonly code?: number;
}

/** Which packets a rule's source or destination side matches. Empty: any. */
export interface EntityRule {
  readonly nets?: readonly string[];
  readonly notNets?: readonly string[];
  /** Canonical selector text (policy/selector.ts), matched against endpoint labels. */
  readonly selector?: string;
  readonly notSelector?: string;
  readonly ports?: readonly PortRange[];
  readonly notPorts?: readonly PortRange[];
}

export interface Rule {
  readonly action: Action;
  readonly protocol?: Protocol;
  readonly icmp?: IcmpMatch;
  readonly notICMP?: IcmpMatch;
  readonly source: EntityRule;
  readonly destination: EntityRule;
}

export interface Profile {
  readonly name: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly annotations: Readonly<Record<string, string>>;
  readonly ingress: readonly Rule[];
  readonly egress: readonly Rule[];
  /** Labels every endpoint using this profile carries (the network name, by default). */
  readonly labelsToApply: Readonly<Record<string, string>>;
}

export type Labels = Readonly<Record<string, string>>;

/** IP protocol numbers of the named protocols: a rule saying `6` means the same as `tcp`. */
export const PROTOCOL_NUMBERS = { tcp: 6, udp: 17, icmp: 1, icmpv6: 58, sctp: 132 } as const;

export function protocolNumber(p: Protocol): number {
  return typeof p === 'number' ? p : PROTOCOL_NUMBERS[p];
}
