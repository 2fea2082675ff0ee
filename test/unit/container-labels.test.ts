import test from 'ava';
import { containerLabelsToEndpointLabels } from '../../driver/container-labels';

test('only org.projectcalico.label.* labels are copied, without the prefix', (t) => {
  t.deepEqual(
    containerLabelsToEndpointLabels({
      'org.projectcalico.label.role': 'frontend',
      'org.projectcalico.label.tier': '',
      'org.projectcalico.label.example.com/team': 'a_b.c-d',
      'com.example.other': 'x',
      maintainer: 'me',
    }),
    { role: 'frontend', tier: '', 'example.com/team': 'a_b.c-d' },
  );
});

const refused: [string, string][] = [
  ['org.projectcalico.label.role', 'x --jump ACCEPT'],
  ['org.projectcalico.label.role', 'a\nb'],
  ['org.projectcalico.label.role', '-leading-dash'],
  ['org.projectcalico.label.has space', 'x'],
  ['org.projectcalico.label.', 'x'],
  ['org.projectcalico.label.role', 'x'.repeat(64)],
  ['org.projectcalico.label.ro,le', 'x'],
];

for (const [name, value] of refused) {
  test(`refuses ${JSON.stringify(name)}=${JSON.stringify(value)}`, (t) => {
    t.deepEqual(containerLabelsToEndpointLabels({ [name]: value }), {});
  });
}

test('a label key as long as a profile name (a network name) is kept, as selectors can match it', (t) => {
  const key = `net-${'a'.repeat(120)}`;
  t.deepEqual(containerLabelsToEndpointLabels({ [`org.projectcalico.label.${key}`]: '' }), { [key]: '' });
});
