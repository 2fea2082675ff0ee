// Calico's Profile resource document (apiVersion projectcalico.org/v3, kind Profile) <-> the
// in-memory Profile of policy/types.ts. Both what users apply and what the datastore stores go
// through parseProfileResource, so it is the one gate in front of the iptables renderer.
//
// Strict on purpose: an unknown field (a typo such as `notNet`, or a Calico feature we do not
// enforce such as `notProtocol` or `http`) is refused with its path rather than ignored, because
// an ignored match criterion silently widens a rule. Everything that can reach an iptables or
// ipset argument (names, label keys and values, selectors, CIDRs, ports, ICMP numbers) is checked
// against a character set that cannot form an option or break a line, so a document can never
// inject arguments.
//
// Normalizations: actions and protocol names to lower case, CIDRs canonical (a bare address
// becomes /32 or /128), selectors canonical (policy/selector.ts), empty lists and empty selectors
// dropped (Calico reads them as "no constraint"), label maps sorted by key. Numeric protocols keep
// their number so documents round-trip as written; policy/types.ts protocolNumber() relates them.
import { parseAllDocuments } from 'yaml';
import { formatCidr } from '../ipam/cidr';
import { InvalidRequestError } from '../lib/errors';
import { parseNet } from './addresses';
import { KEY_NAME, labelKeyProblem, labelValueProblem, parseSelector } from './selector';
import { protocolNumber, type Action, type EntityRule, type IcmpMatch, type PortRange, type Profile, type Protocol, type Rule } from './types';

export const API_VERSION = 'projectcalico.org/v3';

/** Marks profiles the driver created, so DeleteNetwork removes only those. */
export const CREATED_BY_ANNOTATION = 'calico-libnetwork/created-by';

/** Docker network names allowed as profile names and label keys ([a-zA-Z0-9][a-zA-Z0-9_.-]*):
 * the label key name syntax, because the default profile uses its name as a label key. */
export const PROFILE_NAME = KEY_NAME;

const MAX_ANNOTATION_LENGTH = 4096;

// ---------------------------------------------------------------------------------------------
// The document shape, as written by profileToResource (plain JSON).

export type ResourceAction = 'Allow' | 'Deny' | 'Log';
export type ResourceProtocol = 'TCP' | 'UDP' | 'ICMP' | 'ICMPv6' | 'SCTP' | number;
/** A single port as a number, a range as "from:to". */
export type ResourcePort = number | string;

export interface EntityRuleResource {
  nets?: string[];
  notNets?: string[];
  selector?: string;
  notSelector?: string;
  ports?: ResourcePort[];
  notPorts?: ResourcePort[];
}

export interface RuleResource {
  action: ResourceAction;
  protocol?: ResourceProtocol;
  icmp?: { type: number; code?: number };
  notICMP?: { type: number; code?: number };
  source: EntityRuleResource;
  destination: EntityRuleResource;
}

export interface ProfileResource {
  apiVersion: typeof API_VERSION;
  kind: 'Profile';
  metadata: { name: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  spec: { ingress: RuleResource[]; egress: RuleResource[]; labelsToApply?: Record<string, string> };
}

// ---------------------------------------------------------------------------------------------
// Decoding helpers: every error names the path of the offending value.

type Json = Record<string, unknown>;

function fail(path: string, message: string): never {
  throw new InvalidRequestError(`${path}: ${message}`);
}

function kindOf(v: unknown): string {
  return v === null ? 'null' : Array.isArray(v) ? 'array' : typeof v;
}

/** Quotes a user value for a message without letting it span lines or grow without bound. */
function show(v: unknown): string {
  const s = typeof v === 'string' ? v : String(v);
  const cut = s.length > 80 ? `${s.slice(0, 80)}...` : s;
  return typeof v === 'string' && /^[\x20-\x7e]*$/.test(cut) && !cut.includes("'") ? `'${cut}'` : JSON.stringify(cut);
}

function child(path: string, key: string): string {
  const segment = /^[A-Za-z_][A-Za-z0-9_]*$/.test(key) ? key : `[${JSON.stringify(key)}]`;
  if (path === '') return segment.startsWith('[') ? segment : key;
  return segment.startsWith('[') ? `${path}${segment}` : `${path}.${segment}`;
}

/** An object with only the allowed fields; null-valued fields count as absent (YAML `key:`). */
function fields(v: unknown, path: string, allowed: readonly string[]): Json {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) fail(path || '(document)', `must be an object, got ${kindOf(v)}`);
  const obj = v as Json;
  for (const key of Object.keys(obj)) {
    if (!allowed.includes(key)) fail(child(path, key), `unknown field (expected ${allowed.join(', ')})`);
  }
  const out: Json = {};
  for (const key of allowed) if (obj[key] !== undefined && obj[key] !== null) out[key] = obj[key];
  return out;
}

function string(v: unknown, path: string): string {
  if (typeof v !== 'string') fail(path, `must be a string, got ${kindOf(v)}`);
  return v;
}

function integer(v: unknown, path: string, min: number, max: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    fail(path, `must be an integer from ${min} to ${max}, got ${typeof v === 'number' ? String(v) : kindOf(v)}`);
  }
  return v;
}

function list(v: unknown, path: string): unknown[] {
  if (!Array.isArray(v)) fail(path, `must be a list, got ${kindOf(v)}`);
  return v;
}

function sortedRecord(entries: Iterable<[string, string]>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of [...entries].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) out[k] = v;
  return out;
}

/** A map of strings; unlike fields(), a null value is an error (a label `role:` with no value is
 * more likely a mistake than a request for the empty value). */
function stringMap(v: unknown, path: string): [string, string][] {
  if (v === undefined) return [];
  if (typeof v !== 'object' || v === null || Array.isArray(v)) fail(path, `must be an object, got ${kindOf(v)}`);
  return Object.entries(v as Json).map(([key, value]) => [key, string(value, child(path, key))]);
}

function labels(v: unknown, path: string): Record<string, string> {
  const entries = stringMap(v, path);
  for (const [key, value] of entries) {
    const keyProblem = labelKeyProblem(key);
    if (keyProblem !== undefined) fail(path, `${show(key)} is not a valid label key: ${keyProblem}`);
    const valueProblem = labelValueProblem(value);
    if (valueProblem !== undefined) fail(child(path, key), `${show(value)} is not a valid label value: ${valueProblem}`);
  }
  return sortedRecord(entries);
}

function annotations(v: unknown, path: string): Record<string, string> {
  const entries = stringMap(v, path);
  for (const [key, value] of entries) {
    const keyProblem = labelKeyProblem(key);
    if (keyProblem !== undefined) fail(path, `${show(key)} is not a valid annotation key: ${keyProblem}`);
    if (value.length > MAX_ANNOTATION_LENGTH || /[\x00-\x1f\x7f]/.test(value)) {
      fail(child(path, key), `must be at most ${MAX_ANNOTATION_LENGTH} characters without control characters (such as newlines)`);
    }
  }
  return sortedRecord(entries);
}

// ---------------------------------------------------------------------------------------------
// Rules

const ACTIONS: readonly Action[] = ['allow', 'deny', 'log'];
const PROTOCOL_NAMES: Readonly<Record<string, Protocol>> = { tcp: 'tcp', udp: 'udp', icmp: 'icmp', icmpv6: 'icmpv6', sctp: 'sctp' };
const PORT_PROTOCOLS = new Set([6, 17, 132]);
const ICMP_PROTOCOLS = new Set([1, 58]);

function action(v: unknown, path: string): Action {
  const s = string(v, path);
  const a = ACTIONS.find((x) => x === s.toLowerCase());
  if (a === undefined) fail(path, `must be one of Allow, Deny, Log, got ${show(s)}`);
  return a;
}

function protocol(v: unknown, path: string): Protocol {
  if (typeof v === 'number') return integer(v, path, 1, 255);
  if (typeof v === 'string') {
    const p = PROTOCOL_NAMES[v.toLowerCase()];
    if (p !== undefined) return p;
  }
  return fail(path, `must be TCP, UDP, ICMP, ICMPv6, SCTP or a protocol number from 1 to 255, got ${typeof v === 'string' ? show(v) : kindOf(v)}`);
}

function icmp(v: unknown, path: string): IcmpMatch {
  const o = fields(v, path, ['type', 'code']);
  if (o.type === undefined) fail(child(path, 'type'), 'is required');
  const type = integer(o.type, child(path, 'type'), 0, 254);
  return o.code === undefined ? { type } : { type, code: integer(o.code, child(path, 'code'), 0, 255) };
}

const PORT_NUMBER = /^(0|[1-9][0-9]{0,4})$/;

function portRange(v: unknown, path: string): PortRange {
  if (typeof v === 'number') {
    const p = integer(v, path, 0, 65535);
    return { from: p, to: p };
  }
  if (typeof v !== 'string') fail(path, `must be a port number or a "from:to" range, got ${kindOf(v)}`);
  const parts = v.split(':');
  if (parts.length > 2 || !parts.every((p) => PORT_NUMBER.test(p))) {
    fail(path, `${show(v)} is not a port or port range: use a number from 0 to 65535 or "from:to" (named ports are not supported)`);
  }
  const [from, to] = parts.map(Number) as [number, number?];
  const end = to ?? from;
  if (from > 65535 || end > 65535) fail(path, `${show(v)} is out of range: ports are 0 to 65535`);
  if (from > end) fail(path, `${show(v)} is an empty range: the first port must not be greater than the second`);
  return { from, to: end };
}

function net(v: unknown, path: string): string {
  const s = string(v, path);
  try {
    return formatCidr(parseNet(s, 'CIDR'));
  } catch (err) {
    // parseCidr explains why (missing prefix, host bits set, ...); keep that, lead with the path.
    const lead = `invalid CIDR ${JSON.stringify(s)}: `;
    const detail = err instanceof InvalidRequestError && err.message.startsWith(lead) ? err.message.slice(lead.length) : '';
    return fail(path, `${show(s)} is not a valid CIDR${detail === '' ? '' : ` (${detail})`}`);
  }
}

function selector(v: unknown, path: string): string | undefined {
  const s = string(v, path);
  // The stored form is canonical (single-line) either way; a raw control character in a document
  // is refused anyway so that no such byte is ever accepted into policy.
  if (/[\x00-\x1f\x7f]/.test(s)) fail(path, 'must not contain control characters such as newlines or tabs');
  if (s.trim() === '') return undefined; // Calico reads an empty selector field as "no selector".
  try {
    return parseSelector(s).text;
  } catch (err) {
    if (err instanceof InvalidRequestError) fail(path, err.message);
    throw err;
  }
}

function nonEmpty<T>(v: unknown, path: string, item: (x: unknown, p: string) => T): T[] | undefined {
  if (v === undefined) return undefined;
  const out = list(v, path).map((x, i) => item(x, `${path}[${i}]`));
  return out.length === 0 ? undefined : out;
}

const ENTITY_FIELDS = ['nets', 'notNets', 'selector', 'notSelector', 'ports', 'notPorts'] as const;

function entityRule(v: unknown, path: string): EntityRule {
  if (v === undefined) return {};
  const o = fields(v, path, ENTITY_FIELDS);
  const out: { -readonly [K in keyof EntityRule]: EntityRule[K] } = {};
  const nets = nonEmpty(o.nets, child(path, 'nets'), net);
  const notNets = nonEmpty(o.notNets, child(path, 'notNets'), net);
  const sel = o.selector === undefined ? undefined : selector(o.selector, child(path, 'selector'));
  const notSel = o.notSelector === undefined ? undefined : selector(o.notSelector, child(path, 'notSelector'));
  const ports = nonEmpty(o.ports, child(path, 'ports'), portRange);
  const notPorts = nonEmpty(o.notPorts, child(path, 'notPorts'), portRange);
  if (nets !== undefined) out.nets = nets;
  if (notNets !== undefined) out.notNets = notNets;
  if (sel !== undefined) out.selector = sel;
  if (notSel !== undefined) out.notSelector = notSel;
  if (ports !== undefined) out.ports = ports;
  if (notPorts !== undefined) out.notPorts = notPorts;
  return out;
}

function protocolLabel(p: Protocol | undefined): string {
  return p === undefined ? 'no protocol' : `protocol ${typeof p === 'number' ? p : protocolToResource(p)}`;
}

function rule(v: unknown, path: string): Rule {
  const o = fields(v, path, ['action', 'protocol', 'icmp', 'notICMP', 'source', 'destination']);
  if (o.action === undefined) fail(child(path, 'action'), 'is required (Allow, Deny or Log)');
  const out: { -readonly [K in keyof Rule]: Rule[K] } = {
    action: action(o.action, child(path, 'action')),
    source: entityRule(o.source, child(path, 'source')),
    destination: entityRule(o.destination, child(path, 'destination')),
  };
  if (o.protocol !== undefined) out.protocol = protocol(o.protocol, child(path, 'protocol'));
  if (o.icmp !== undefined) out.icmp = icmp(o.icmp, child(path, 'icmp'));
  if (o.notICMP !== undefined) out.notICMP = icmp(o.notICMP, child(path, 'notICMP'));

  // Calico's rules: port matches need a protocol that has ports, ICMP matches an ICMP protocol;
  // iptables would refuse the rendered rule otherwise.
  const number = out.protocol === undefined ? undefined : protocolNumber(out.protocol);
  for (const side of ['source', 'destination'] as const) {
    for (const f of ['ports', 'notPorts'] as const) {
      if (out[side][f] !== undefined && (number === undefined || !PORT_PROTOCOLS.has(number))) {
        fail(`${path}.${side}.${f}`, `ports are only allowed with protocol TCP, UDP or SCTP; this rule has ${protocolLabel(out.protocol)}`);
      }
    }
  }
  for (const f of ['icmp', 'notICMP'] as const) {
    if (out[f] !== undefined && (number === undefined || !ICMP_PROTOCOLS.has(number))) {
      fail(child(path, f), `is only allowed with protocol ICMP or ICMPv6; this rule has ${protocolLabel(out.protocol)}`);
    }
  }
  return out;
}

function rules(v: unknown, path: string): Rule[] {
  return v === undefined ? [] : list(v, path).map((r, i) => rule(r, `${path}[${i}]`));
}

function profileAt(doc: unknown, root: string): Profile {
  const o = fields(doc, root, ['apiVersion', 'kind', 'metadata', 'spec']);
  if (o.apiVersion !== undefined && o.apiVersion !== API_VERSION) {
    fail(child(root, 'apiVersion'), `must be '${API_VERSION}', got ${typeof o.apiVersion === 'string' ? show(o.apiVersion) : kindOf(o.apiVersion)}`);
  }
  if (o.kind !== 'Profile') fail(child(root, 'kind'), `must be 'Profile', got ${typeof o.kind === 'string' ? show(o.kind) : kindOf(o.kind)}`);
  const metaPath = child(root, 'metadata');
  if (o.metadata === undefined) fail(metaPath, 'is required');
  const meta = fields(o.metadata, metaPath, ['name', 'labels', 'annotations']);
  const namePath = child(metaPath, 'name');
  if (meta.name === undefined) fail(namePath, 'is required');
  const name = string(meta.name, namePath);
  if (!PROFILE_NAME.test(name)) {
    fail(namePath, `${show(name)} is not a valid profile name: 1 to 253 letters, digits, '_', '.' or '-', starting with a letter or digit`);
  }
  const specPath = child(root, 'spec');
  const spec = o.spec === undefined ? {} : fields(o.spec, specPath, ['ingress', 'egress', 'labelsToApply']);
  return {
    name,
    labels: labels(meta.labels, child(metaPath, 'labels')),
    annotations: annotations(meta.annotations, child(metaPath, 'annotations')),
    ingress: rules(spec.ingress, child(specPath, 'ingress')),
    egress: rules(spec.egress, child(specPath, 'egress')),
    labelsToApply: labels(spec.labelsToApply, child(specPath, 'labelsToApply')),
  };
}

/** Validates and normalizes one Profile document. `source` (a file name, a datastore key) leads
 * every error message. Throws InvalidRequestError naming the path of the first problem. */
export function parseProfileResource(doc: unknown, source?: string): Profile {
  return withSource(source, () => profileAt(doc, ''));
}

function withSource<T>(source: string | undefined, f: () => T): T {
  try {
    return f();
  } catch (err) {
    if (source !== undefined && source !== '' && err instanceof InvalidRequestError) {
      throw new InvalidRequestError(`${source}: ${err.message}`, { cause: err });
    }
    throw err;
  }
}

// ---------------------------------------------------------------------------------------------
// Encoding

const PROTOCOL_RESOURCE_NAMES: Readonly<Record<Exclude<Protocol, number>, ResourceProtocol>> = {
  tcp: 'TCP',
  udp: 'UDP',
  icmp: 'ICMP',
  icmpv6: 'ICMPv6',
  sctp: 'SCTP',
};

function protocolToResource(p: Protocol): ResourceProtocol {
  return typeof p === 'number' ? p : PROTOCOL_RESOURCE_NAMES[p];
}

function portToResource(r: PortRange): ResourcePort {
  return r.from === r.to ? r.from : `${r.from}:${r.to}`;
}

function entityToResource(e: EntityRule): EntityRuleResource {
  const out: EntityRuleResource = {};
  if (e.nets !== undefined && e.nets.length > 0) out.nets = [...e.nets];
  if (e.notNets !== undefined && e.notNets.length > 0) out.notNets = [...e.notNets];
  if (e.selector !== undefined) out.selector = e.selector;
  if (e.notSelector !== undefined) out.notSelector = e.notSelector;
  if (e.ports !== undefined && e.ports.length > 0) out.ports = e.ports.map(portToResource);
  if (e.notPorts !== undefined && e.notPorts.length > 0) out.notPorts = e.notPorts.map(portToResource);
  return out;
}

const ACTION_RESOURCE_NAMES: Readonly<Record<Action, ResourceAction>> = { allow: 'Allow', deny: 'Deny', log: 'Log' };

function ruleToResource(r: Rule): RuleResource {
  return {
    action: ACTION_RESOURCE_NAMES[r.action],
    ...(r.protocol !== undefined && { protocol: protocolToResource(r.protocol) }),
    ...(r.icmp !== undefined && { icmp: { ...r.icmp } }),
    ...(r.notICMP !== undefined && { notICMP: { ...r.notICMP } }),
    source: entityToResource(r.source),
    destination: entityToResource(r.destination),
  };
}

/** The document for a profile: what calicoctl prints and what the datastore stores. Keys are in a
 * fixed order and label maps sorted, so equal profiles serialize to equal JSON. */
export function profileToResource(p: Profile): ProfileResource {
  const metadata: ProfileResource['metadata'] = { name: p.name };
  if (Object.keys(p.labels).length > 0) metadata.labels = sortedRecord(Object.entries(p.labels));
  if (Object.keys(p.annotations).length > 0) metadata.annotations = sortedRecord(Object.entries(p.annotations));
  const spec: ProfileResource['spec'] = { ingress: p.ingress.map(ruleToResource), egress: p.egress.map(ruleToResource) };
  if (Object.keys(p.labelsToApply).length > 0) spec.labelsToApply = sortedRecord(Object.entries(p.labelsToApply));
  return { apiVersion: API_VERSION, kind: 'Profile', metadata, spec };
}

// ---------------------------------------------------------------------------------------------
// Files for `calicoctl apply -f`

function profilesIn(value: unknown, label: string | undefined): Profile[] {
  if (Array.isArray(value)) return value.map((doc, i) => withSource(label, () => profileAt(doc, `[${i}]`)));
  if (typeof value === 'object' && value !== null && (value as Json).kind === 'ProfileList') {
    return withSource(label, () => {
      const o = fields(value, '', ['apiVersion', 'kind', 'metadata', 'items']);
      if (o.apiVersion !== undefined && o.apiVersion !== API_VERSION) fail('apiVersion', `must be '${API_VERSION}'`);
      // calicoctl prints a list-level resourceVersion; it carries nothing to apply.
      if (o.metadata !== undefined) fields(o.metadata, 'metadata', ['resourceVersion']);
      return (o.items === undefined ? [] : list(o.items, 'items')).map((doc, i) => profileAt(doc, `items[${i}]`));
    });
  }
  return [withSource(label, () => profileAt(value, ''))];
}

function firstLine(message: string): string {
  // The yaml package appends a code frame after "at line L, column C:"; keep only the position.
  return (message.split('\n', 1)[0] ?? message).replace(/:$/, '');
}

/** Profiles in a file for `calicoctl apply -f`: YAML (one or more `---` documents) or JSON (an
 * object or an array); each document may also be a `kind: ProfileList` with `items`. Without
 * `format`, YAML is assumed (JSON is valid YAML). A name given twice is refused, because which
 * definition wins would depend on apply order. Returns [] for a file with no documents. */
export function parseProfileDocuments(text: string, format: 'yaml' | 'json' = 'yaml', source?: string): Profile[] {
  const lead = source === undefined || source === '' ? '' : `${source}: `;
  const values: unknown[] = [];
  if (format === 'json') {
    try {
      values.push(JSON.parse(text) as unknown);
    } catch (err) {
      throw new InvalidRequestError(`${lead}invalid JSON: ${err instanceof Error ? err.message : String(err)}`);
    }
  } else {
    const docs = parseAllDocuments(text, { uniqueKeys: true, prettyErrors: true });
    for (const [i, doc] of docs.entries()) {
      const error = doc.errors[0];
      const where = docs.length > 1 ? `document ${i + 1}: ` : '';
      if (error !== undefined) throw new InvalidRequestError(`${lead}${where}invalid YAML: ${firstLine(error.message)}`);
      try {
        values.push(doc.contents === null ? undefined : (doc.toJS({ maxAliasCount: 100 }) as unknown));
      } catch (err) {
        // The alias limit: a few lines of anchors can otherwise expand to gigabytes.
        throw new InvalidRequestError(`${lead}${where}invalid YAML: ${err instanceof Error ? err.message : String(err)}`);
      }
    }
  }
  const out: Profile[] = [];
  const seen = new Map<string, number>();
  for (const [i, value] of values.entries()) {
    if (value === undefined || value === null) continue; // an empty document, e.g. after a trailing '---'
    const label = [source, values.length > 1 ? `document ${i + 1}` : undefined].filter((s) => s !== undefined && s !== '').join(' ');
    for (const p of profilesIn(value, label === '' ? undefined : label)) {
      const first = seen.get(p.name);
      if (first !== undefined) {
        const where = values.length > 1 ? ` (documents ${first + 1} and ${i + 1})` : '';
        throw new InvalidRequestError(`${lead}profile ${show(p.name)} is defined more than once${where}`);
      }
      seen.set(p.name, i);
      out.push(p);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Defaults

/** The defaults Calico users rely on: members of the network may reach each other (every endpoint
 * of the profile carries the label <name>, and ingress allows sources that have it), all egress is
 * allowed, nothing else may reach the members. */
export function defaultProfile(name: string, createdBy: string): Profile {
  if (!PROFILE_NAME.test(name)) throw new InvalidRequestError(`invalid profile name ${show(name)}`);
  return {
    name,
    labels: {},
    annotations: { [CREATED_BY_ANNOTATION]: createdBy },
    ingress: [{ action: 'allow', source: { selector: parseSelector(`has(${name})`).text }, destination: {} }],
    egress: [{ action: 'allow', source: {}, destination: {} }],
    labelsToApply: { [name]: '' },
  };
}
