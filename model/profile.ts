// A policy profile in Calico's resource shape (kind Profile, metadata, spec). Each Docker network
// gets one, named after the network. The rule language is enforced by the policy agent; here we
// keep the data model and the defaults the driver writes.
import { array, object, optional, record, str, unknownValue, withDefault, pattern } from '../protocol/validate';

export const RuleAction = pattern(/^(allow|deny|log)$/, "one of 'allow', 'deny', 'log'");

export const Rule = object({
  action: RuleAction,
  protocol: optional(unknownValue),
  source: optional(record(unknownValue)),
  destination: optional(record(unknownValue)),
  icmp: optional(record(unknownValue)),
  notICMP: optional(record(unknownValue)),
});
export type Rule = ReturnType<typeof Rule>;

export const Profile = object({
  kind: pattern(/^Profile$/, "'Profile'"),
  metadata: object({
    name: str,
    labels: withDefault(record(str), {}),
    annotations: withDefault(record(str), {}),
  }),
  spec: object({
    ingress: withDefault(array(Rule), []),
    egress: withDefault(array(Rule), []),
    labelsToApply: withDefault(record(str), {}),
  }),
});
export type Profile = ReturnType<typeof Profile>;

/** Marks profiles the driver created, so DeleteNetwork removes only those. */
export const CREATED_BY_ANNOTATION = 'calico-libnetwork/created-by';

/** Docker network names allowed as profile names and label keys ([a-zA-Z0-9][a-zA-Z0-9_.-]*). */
export const PROFILE_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,252}$/;

/** The defaults Calico users rely on: members of the network may reach each other (every endpoint
 * of the profile carries the label <name>, and ingress allows sources that have it), all egress is
 * allowed, nothing else may reach the members. */
export function defaultProfile(name: string, createdBy: string): Profile {
  return {
    kind: 'Profile',
    metadata: { name, labels: {}, annotations: { [CREATED_BY_ANNOTATION]: createdBy } },
    spec: {
      ingress: [{ action: 'allow', source: { selector: `has(${name})` } }],
      egress: [{ action: 'allow' }],
      labelsToApply: { [name]: '' },
    },
  };
}
