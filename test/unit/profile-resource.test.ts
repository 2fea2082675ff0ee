import test from 'ava';
import { CorruptDataError, InvalidRequestError } from '../../lib/errors';
import { decodeProfile, encodeProfile } from '../../model/profile';
import {
  CREATED_BY_ANNOTATION,
  defaultProfile,
  parseProfileDocuments,
  parseProfileResource,
  profileToResource,
  type ProfileResource,
} from '../../policy/profile-resource';
import type { Profile } from '../../policy/types';

const base = { apiVersion: 'projectcalico.org/v3', kind: 'Profile', metadata: { name: 'web' } };
/** A document with one ingress rule. */
const withRule = (rule: unknown): unknown => ({ ...base, spec: { ingress: [rule] } });

const full: ProfileResource = {
  apiVersion: 'projectcalico.org/v3',
  kind: 'Profile',
  metadata: { name: 'web', labels: { env: 'prod', tier: 'front' }, annotations: { 'example.com/owner': 'team a' } },
  spec: {
    ingress: [
      {
        action: 'Allow',
        protocol: 'TCP',
        source: { notNets: ['10.9.0.0/16'], selector: "role == 'frontend'" },
        destination: { ports: [8080, '9000:9100'], notPorts: [9050] },
      },
      { action: 'Log', protocol: 'ICMP', icmp: { type: 8, code: 0 }, source: {}, destination: {} },
      { action: 'Deny', protocol: 'ICMPv6', notICMP: { type: 128 }, source: { nets: ['fd00::/64'] }, destination: {} },
      { action: 'Allow', protocol: 47, source: { notSelector: 'has(quarantine)' }, destination: {} },
    ],
    egress: [{ action: 'Allow', source: {}, destination: {} }],
    labelsToApply: { web: '' },
  },
};

test('round trip: resource -> Profile -> the same resource', (t) => {
  const p = parseProfileResource(full);
  t.deepEqual(profileToResource(p), full);
  t.is(JSON.stringify(profileToResource(p)), JSON.stringify(full), 'key order is fixed too');
});

test('round trip: Profile -> resource -> the same Profile', (t) => {
  const p = parseProfileResource(full);
  t.deepEqual(parseProfileResource(profileToResource(p)), p);
  const d = defaultProfile('net1', 'host-a');
  t.deepEqual(parseProfileResource(profileToResource(d)), d);
});

test('normalizes spellings to the stored form', (t) => {
  const p = parseProfileResource({
    kind: 'Profile', // apiVersion may be omitted
    metadata: { name: 'db', labels: { z: '1', a: '2' } },
    spec: {
      ingress: [
        {
          action: 'allow',
          protocol: 'tcp',
          source: { nets: ['10.0.0.1', 'FD00:0::1', '10.1.0.0/16'], selector: 'has( b )&&has(a)', notSelector: '  ' },
          destination: { ports: ['80', '1000:2000'], notPorts: [] },
        },
      ],
      egress: [{ action: 'DENY', protocol: 'udp', destination: { nets: [] } }],
      labelsToApply: null, // YAML `labelsToApply:` with nothing after it
    },
  });
  t.deepEqual(p, {
    name: 'db',
    labels: { a: '2', z: '1' },
    annotations: {},
    ingress: [
      {
        action: 'allow',
        protocol: 'tcp',
        source: { nets: ['10.0.0.1/32', 'fd00::1/128', '10.1.0.0/16'], selector: 'has(a) && has(b)' },
        destination: { ports: [{ from: 80, to: 80 }, { from: 1000, to: 2000 }] },
      },
    ],
    egress: [{ action: 'deny', protocol: 'udp', source: {}, destination: {} }],
    labelsToApply: {},
  });
  t.deepEqual(Object.keys(p.labels), ['a', 'z'], 'labels sorted');
});

test('protocols: names in any case and numbers', (t) => {
  const cases: [unknown, unknown][] = [
    ['TCP', 'tcp'],
    ['Udp', 'udp'],
    ['icmp', 'icmp'],
    ['ICMPv6', 'icmpv6'],
    ['sctp', 'sctp'],
    [1, 1],
    [6, 6],
    [255, 255],
  ];
  for (const [input, expected] of cases) t.is(parseProfileResource(withRule({ action: 'Allow', protocol: input })).ingress[0]?.protocol, expected as Profile['ingress'][number]['protocol'], String(input));
});

test('ports are allowed with a numeric TCP, UDP or SCTP protocol too', (t) => {
  for (const protocol of [6, 17, 132, 'SCTP']) {
    t.notThrows(() => parseProfileResource(withRule({ action: 'Allow', protocol, destination: { ports: [0, 65535, '0:65535'] } })), String(protocol));
  }
  t.notThrows(() => parseProfileResource(withRule({ action: 'Allow', protocol: 58, icmp: { type: 254, code: 255 } })));
});

// [name, document, exact message]
const invalid: [string, unknown, string][] = [
  ['not an object', 'kind: Profile', '(document): must be an object, got string'],
  ['wrong kind', { ...base, kind: 'NetworkPolicy' }, "kind: must be 'Profile', got 'NetworkPolicy'"],
  ['wrong apiVersion', { ...base, apiVersion: 'v1' }, "apiVersion: must be 'projectcalico.org/v3', got 'v1'"],
  ['unknown top-level field', { ...base, status: {} }, 'status: unknown field (expected apiVersion, kind, metadata, spec)'],
  ['missing metadata', { kind: 'Profile' }, 'metadata: is required'],
  ['missing name', { kind: 'Profile', metadata: {} }, 'metadata.name: is required'],
  ['unknown metadata field', { ...base, metadata: { name: 'a', namespace: 'x' } }, 'metadata.namespace: unknown field (expected name, labels, annotations)'],
  ['name with a space', { ...base, metadata: { name: 'a b' } }, "metadata.name: 'a b' is not a valid profile name: 1 to 253 letters, digits, '_', '.' or '-', starting with a letter or digit"],
  ['name that is an option', { ...base, metadata: { name: '--jump' } }, "metadata.name: '--jump' is not a valid profile name: 1 to 253 letters, digits, '_', '.' or '-', starting with a letter or digit"],
  ['name with a newline', { ...base, metadata: { name: 'a\nb' } }, 'metadata.name: "a\\nb" is not a valid profile name: 1 to 253 letters, digits, \'_\', \'.\' or \'-\', starting with a letter or digit'],
  ['name too long', { ...base, metadata: { name: 'a'.repeat(254) } }, `metadata.name: '${'a'.repeat(80)}...' is not a valid profile name: 1 to 253 letters, digits, '_', '.' or '-', starting with a letter or digit`],
  ['label value injecting arguments', { ...base, metadata: { name: 'a', labels: { role: 'x --jump ACCEPT' } } }, "metadata.labels.role: 'x --jump ACCEPT' is not a valid label value: it must be empty or at most 63 letters, digits, '_', '.' or '-', starting and ending with a letter or digit"],
  ['label key injecting arguments', { ...base, metadata: { name: 'a', labels: { '-j ACCEPT': 'x' } } }, "metadata.labels: '-j ACCEPT' is not a valid label key: the name must be 1 to 253 letters, digits, '_', '.' or '-', starting with a letter or digit"],
  ['label value not a string', { ...base, metadata: { name: 'a', labels: { role: 5 } } }, 'metadata.labels.role: must be a string, got number'],
  ['label value null', { ...base, spec: { labelsToApply: { role: null } } }, 'spec.labelsToApply.role: must be a string, got null'],
  ['labelsToApply key with a newline', { ...base, spec: { labelsToApply: { 'a\nb': '' } } }, 'spec.labelsToApply: "a\\nb" is not a valid label key: the name must be 1 to 253 letters, digits, \'_\', \'.\' or \'-\', starting with a letter or digit'],
  ['annotation with a newline', { ...base, metadata: { name: 'a', annotations: { note: 'a\nb' } } }, 'metadata.annotations.note: must be at most 4096 characters without control characters (such as newlines)'],
  ['unknown spec field', { ...base, spec: { order: 1 } }, 'spec.order: unknown field (expected ingress, egress, labelsToApply)'],
  ['rules not a list', { ...base, spec: { ingress: {} } }, 'spec.ingress: must be a list, got object'],
  ['missing action', withRule({}), 'spec.ingress[0].action: is required (Allow, Deny or Log)'],
  ['unsupported action', withRule({ action: 'Pass' }), "spec.ingress[0].action: must be one of Allow, Deny, Log, got 'Pass'"],
  ['unsupported rule field', withRule({ action: 'Allow', notProtocol: 'TCP' }), 'spec.ingress[0].notProtocol: unknown field (expected action, protocol, icmp, notICMP, source, destination)'],
  ['typo in entity field', withRule({ action: 'Allow', source: { notNet: ['10.0.0.0/8'] } }), 'spec.ingress[0].source.notNet: unknown field (expected nets, notNets, selector, notSelector, ports, notPorts)'],
  ['unknown protocol', withRule({ action: 'Allow', protocol: 'gre' }), "spec.ingress[0].protocol: must be TCP, UDP, ICMP, ICMPv6, SCTP or a protocol number from 1 to 255, got 'gre'"],
  ['protocol 0', withRule({ action: 'Allow', protocol: 0 }), 'spec.ingress[0].protocol: must be an integer from 1 to 255, got 0'],
  ['protocol 256', withRule({ action: 'Allow', protocol: 256 }), 'spec.ingress[0].protocol: must be an integer from 1 to 255, got 256'],
  ['bad CIDR', withRule({ action: 'Allow', source: { nets: ['10.0.0.0/8', '10.0.0.300/8'] } }), `spec.ingress[0].source.nets[1]: '10.0.0.300/8' is not a valid CIDR ("10.0.0.300" is not an IPv4 or IPv6 address)`],
  ['CIDR with host bits', withRule({ action: 'Allow', destination: { notNets: ['10.0.0.1/8'] } }), "spec.ingress[0].destination.notNets[0]: '10.0.0.1/8' is not a valid CIDR (host bits are set; the network is 10.0.0.0/8)"],
  ['CIDR prefix too long', withRule({ action: 'Allow', source: { nets: ['fd00::/129'] } }), "spec.ingress[0].source.nets[0]: 'fd00::/129' is not a valid CIDR (prefix length must be a number from 0 to 128 for IPv6)"],
  ['CIDR injecting arguments', withRule({ action: 'Allow', source: { nets: ['10.0.0.0/8 -j ACCEPT'] } }), "spec.ingress[0].source.nets[0]: '10.0.0.0/8 -j ACCEPT' is not a valid CIDR (prefix length must be a number from 0 to 32 for IPv4)"],
  ['nets not a list', withRule({ action: 'Allow', source: { nets: '10.0.0.0/8' } }), 'spec.ingress[0].source.nets: must be a list, got string'],
  ['port 70000', withRule({ action: 'Allow', protocol: 'TCP', destination: { ports: [70000] } }), 'spec.ingress[0].destination.ports[0]: must be an integer from 0 to 65535, got 70000'],
  ['port range beyond 65535', withRule({ action: 'Allow', protocol: 'TCP', destination: { ports: ['1000:70000'] } }), "spec.ingress[0].destination.ports[0]: '1000:70000' is out of range: ports are 0 to 65535"],
  ['reversed port range', withRule({ action: 'Allow', protocol: 'UDP', source: { notPorts: ['2000:1000'] } }), "spec.ingress[0].source.notPorts[0]: '2000:1000' is an empty range: the first port must not be greater than the second"],
  ['named port', withRule({ action: 'Allow', protocol: 'TCP', destination: { ports: ['http'] } }), `spec.ingress[0].destination.ports[0]: 'http' is not a port or port range: use a number from 0 to 65535 or "from:to" (named ports are not supported)`],
  ['port as an option', withRule({ action: 'Allow', protocol: 'TCP', destination: { ports: ['--dport'] } }), `spec.ingress[0].destination.ports[0]: '--dport' is not a port or port range: use a number from 0 to 65535 or "from:to" (named ports are not supported)`],
  ['fractional port', withRule({ action: 'Allow', protocol: 'TCP', destination: { ports: [80.5] } }), 'spec.ingress[0].destination.ports[0]: must be an integer from 0 to 65535, got 80.5'],
  ['ports without protocol', withRule({ action: 'Allow', destination: { ports: [80] } }), 'spec.ingress[0].destination.ports: ports are only allowed with protocol TCP, UDP or SCTP; this rule has no protocol'],
  ['ports with ICMP', withRule({ action: 'Allow', protocol: 'ICMP', source: { notPorts: [80] } }), 'spec.ingress[0].source.notPorts: ports are only allowed with protocol TCP, UDP or SCTP; this rule has protocol ICMP'],
  ['ports with protocol 47', withRule({ action: 'Allow', protocol: 47, destination: { ports: [80] } }), 'spec.ingress[0].destination.ports: ports are only allowed with protocol TCP, UDP or SCTP; this rule has protocol 47'],
  ['icmp without protocol', withRule({ action: 'Allow', icmp: { type: 8 } }), 'spec.ingress[0].icmp: is only allowed with protocol ICMP or ICMPv6; this rule has no protocol'],
  ['notICMP with TCP', withRule({ action: 'Allow', protocol: 'TCP', notICMP: { type: 8 } }), 'spec.ingress[0].notICMP: is only allowed with protocol ICMP or ICMPv6; this rule has protocol TCP'],
  ['icmp without type', withRule({ action: 'Allow', protocol: 'ICMP', icmp: { code: 0 } }), 'spec.ingress[0].icmp.type: is required'],
  ['icmp type 255', withRule({ action: 'Allow', protocol: 'ICMP', icmp: { type: 255 } }), 'spec.ingress[0].icmp.type: must be an integer from 0 to 254, got 255'],
  ['icmp code 256', withRule({ action: 'Allow', protocol: 'ICMP', icmp: { type: 3, code: 256 } }), 'spec.ingress[0].icmp.code: must be an integer from 0 to 255, got 256'],
  ['icmp unknown field', withRule({ action: 'Allow', protocol: 'ICMP', icmp: { type: 3, kode: 1 } }), 'spec.ingress[0].icmp.kode: unknown field (expected type, code)'],
  ['bad selector', withRule({ action: 'Allow', source: { selector: "role == 'db' && tier = 'x'" } }), "spec.ingress[0].source.selector: selector line 1, column 22: unexpected character '=' (did you mean '=='?)"],
  ['selector with a newline', withRule({ action: 'Allow', source: { selector: "has(a)\n-j ACCEPT" } }), 'spec.ingress[0].source.selector: must not contain control characters such as newlines or tabs'],
  ['selector value injecting arguments', withRule({ action: 'Allow', destination: { notSelector: "role == 'x -j ACCEPT'" } }), "spec.ingress[0].destination.notSelector: selector line 1, column 9: 'x -j ACCEPT' is not a valid label value: it must be empty or at most 63 letters, digits, '_', '.' or '-', starting and ending with a letter or digit"],
  ['selector not a string', withRule({ action: 'Allow', source: { selector: ['has(a)'] } }), 'spec.ingress[0].source.selector: must be a string, got array'],
  ['egress path', { ...base, spec: { egress: [{ action: 'Allow' }, { action: 'Deny', destination: { ports: [22] } }] } }, 'spec.egress[1].destination.ports: ports are only allowed with protocol TCP, UDP or SCTP; this rule has no protocol'],
  ['odd field names are quoted', { ...base, 'bad key': 1 }, '["bad key"]: unknown field (expected apiVersion, kind, metadata, spec)'],
];

for (const [name, doc, message] of invalid) {
  test(`refuses: ${name}`, (t) => {
    const err = t.throws(() => parseProfileResource(doc), { instanceOf: InvalidRequestError });
    t.is(err?.message, message);
  });
}

test('the source, when given, leads the message', (t) => {
  const err = t.throws(() => parseProfileResource(withRule({ action: 'Pass' }), 'policy.yaml'), { instanceOf: InvalidRequestError });
  t.is(err?.message, "policy.yaml: spec.ingress[0].action: must be one of Allow, Deny, Log, got 'Pass'");
});

test('defaultProfile: same-network ingress, all egress, the network label', (t) => {
  t.deepEqual(profileToResource(defaultProfile('my-net.1', 'host-a')), {
    apiVersion: 'projectcalico.org/v3',
    kind: 'Profile',
    metadata: { name: 'my-net.1', annotations: { [CREATED_BY_ANNOTATION]: 'host-a' } },
    spec: {
      ingress: [{ action: 'Allow', source: { selector: 'has(my-net.1)' }, destination: {} }],
      egress: [{ action: 'Allow', source: {}, destination: {} }],
      labelsToApply: { 'my-net.1': '' },
    },
  });
  t.throws(() => defaultProfile('a b', 'host-a'), { instanceOf: InvalidRequestError, message: "invalid profile name 'a b'" });
});

test('stored form: encodeProfile writes the resource JSON, decodeProfile reads it back', (t) => {
  const p = defaultProfile('net1', 'host-a');
  const value = encodeProfile(p);
  t.deepEqual(JSON.parse(value), profileToResource(p));
  t.deepEqual(decodeProfile({ key: '/calico/libnetwork/v1/profiles/net1', value, revision: '1' }), p);
});

test('encodeProfile refuses a hand-built invalid profile, so nothing unreadable is written', (t) => {
  const bad: Profile = { ...defaultProfile('net1', 'host-a'), labelsToApply: { net1: 'x --jump ACCEPT' } };
  const err = t.throws(() => encodeProfile(bad), { instanceOf: InvalidRequestError });
  t.regex(err?.message ?? '', /^profile "net1": spec\.labelsToApply\.net1: 'x --jump ACCEPT' is not a valid label value/);
});

test('decodeProfile: corrupt data is CorruptDataError naming the key', (t) => {
  const key = '/calico/libnetwork/v1/profiles/net1';
  const cases: [string, string][] = [
    ['{', `datastore key ${key} does not hold JSON`],
    ['{"kind":"Profile","metadata":{"name":"net1"},"spec":{"ingress":[{"action":"Jump"}]}}', `datastore key ${key} is malformed: spec.ingress[0].action: must be one of Allow, Deny, Log, got 'Jump'`],
    ['{"kind":"Profile","metadata":{"name":"other"}}', `datastore key ${key} is malformed: it holds profile "other"`],
    ['{"kind":"Profile","metadata":{"name":"net1"},"spec":{"ingress":[{"action":"allow","src":{}}]}}', `datastore key ${key} is malformed: spec.ingress[0].src: unknown field (expected action, protocol, icmp, notICMP, source, destination)`],
  ];
  for (const [value, message] of cases) {
    const err = t.throws(() => decodeProfile({ key, value, revision: '1' }), { instanceOf: CorruptDataError }, value);
    t.is(err?.message, message);
  }
});

test('decodeProfile reads what the previous version stored (no apiVersion, lower-case actions)', (t) => {
  const key = '/calico/libnetwork/v1/profiles/net1';
  const value = JSON.stringify({
    kind: 'Profile',
    metadata: { name: 'net1', labels: {}, annotations: { [CREATED_BY_ANNOTATION]: 'host-a' } },
    spec: { ingress: [{ action: 'allow', source: { selector: 'has(net1)' } }], egress: [{ action: 'allow' }], labelsToApply: { net1: '' } },
  });
  t.deepEqual(decodeProfile({ key, value, revision: '1' }), defaultProfile('net1', 'host-a'));
});

// ---------------------------------------------------------------------------------------------
// Files

const yamlFile = `# two profiles and a list
apiVersion: projectcalico.org/v3
kind: Profile
metadata:
  name: frontend
spec:
  ingress:
  - action: Allow
    protocol: TCP
    source:
      selector: role == 'lb'
    destination:
      ports: [80, "8000:8080"]
  egress:
  - action: Allow
---
apiVersion: projectcalico.org/v3
kind: ProfileList
metadata:
  resourceVersion: "12"
items:
- apiVersion: projectcalico.org/v3
  kind: Profile
  metadata:
    name: db
    labels:
      tier: data
  spec:
    ingress:
    - action: Allow
      protocol: 6
      source:
        selector: has(frontend)
      destination:
        ports: [5432]
---
`;

test('YAML: several documents, a ProfileList, a trailing separator', (t) => {
  const profiles = parseProfileDocuments(yamlFile);
  t.deepEqual(
    profiles.map((p) => p.name),
    ['frontend', 'db'],
  );
  t.deepEqual(profiles[0]?.ingress[0], {
    action: 'allow',
    protocol: 'tcp',
    source: { selector: "role == 'lb'" },
    destination: { ports: [{ from: 80, to: 80 }, { from: 8000, to: 8080 }] },
  });
  t.deepEqual(profiles[1]?.labels, { tier: 'data' });
});

test('YAML: our own output applies unchanged (get -o yaml | apply -f -)', (t) => {
  const p = parseProfileResource(full);
  const json = JSON.stringify([profileToResource(p)]);
  t.deepEqual(parseProfileDocuments(json, 'json'), [p]);
  t.deepEqual(parseProfileDocuments(json), [p], 'JSON is read as YAML too');
  t.deepEqual(parseProfileDocuments(JSON.stringify({ kind: 'ProfileList', items: [profileToResource(p)] }), 'json'), [p]);
});

test('files with no documents give no profiles', (t) => {
  t.deepEqual(parseProfileDocuments(''), []);
  t.deepEqual(parseProfileDocuments('# nothing\n---\n'), []);
  t.deepEqual(parseProfileDocuments('[]', 'json'), []);
});

// [name, text, format, message]
const badFiles: [string, string, 'yaml' | 'json', string][] = [
  ['invalid YAML', 'kind: Profile\nmetadata: {name: a\n', 'yaml', 'p.yaml: invalid YAML: Flow map in block collection must be sufficiently indented and end with a } at line 3, column 1'],
  ['duplicate keys', 'kind: Profile\nkind: Profile\n', 'yaml', 'p.yaml: invalid YAML: Map keys must be unique at line 2, column 1'],
  ['invalid JSON', '{"kind": ', 'json', 'p.yaml: invalid JSON: Unexpected end of JSON input'],
  ['error in the second document', 'kind: Profile\nmetadata: {name: a}\n---\nkind: Profile\nmetadata: {name: b, labels: {x: "a b"}}\n', 'yaml', "p.yaml document 2: metadata.labels.x: 'a b' is not a valid label value: it must be empty or at most 63 letters, digits, '_', '.' or '-', starting and ending with a letter or digit"],
  ['error in a list item', 'kind: ProfileList\nitems:\n- kind: Profile\n  metadata: {name: b, x: 1}\n', 'yaml', 'p.yaml: items[0].metadata.x: unknown field (expected name, labels, annotations)'],
  ['unknown ProfileList field', 'kind: ProfileList\nitems: []\nspec: {}\n', 'yaml', 'p.yaml: spec: unknown field (expected apiVersion, kind, metadata, items)'],
  ['error in a JSON array item', '[{"kind":"Profile","metadata":{"name":"a"}},{"kind":"Policy"}]', 'json', "p.yaml: [1].kind: must be 'Profile', got 'Policy'"],
  ['the same name twice', 'kind: Profile\nmetadata: {name: a}\n---\nkind: Profile\nmetadata: {name: a}\n', 'yaml', "p.yaml: profile 'a' is defined more than once (documents 1 and 2)"],
  ['alias bomb', `a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n`, 'yaml', 'p.yaml: invalid YAML: Excessive alias count indicates a resource exhaustion attack'],
];

for (const [name, text, format, message] of badFiles) {
  test(`file refused: ${name}`, (t) => {
    const err = t.throws(() => parseProfileDocuments(text, format, 'p.yaml'), { instanceOf: InvalidRequestError });
    t.is(err?.message, message);
  });
}
