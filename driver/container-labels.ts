// Docker container labels org.projectcalico.label.<key>=<value> become endpoint labels
// <key>=<value>. Labels end up in selectors and ipset membership, so anything that is not a valid
// label key or value is dropped (and logged) rather than stored.
import { logger } from '../lib/log';
import { labelKeyProblem, labelValueProblem } from '../policy/selector';

export const LABEL_PREFIX = 'org.projectcalico.label.';

const log = logger('labels');

export function containerLabelsToEndpointLabels(containerLabels: Readonly<Record<string, string>>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, value] of Object.entries(containerLabels)) {
    if (!name.startsWith(LABEL_PREFIX)) continue;
    const key = name.slice(LABEL_PREFIX.length);
    // The same rules as labels in profiles and selectors, so every stored label can be matched.
    const problem = labelKeyProblem(key) ?? labelValueProblem(value);
    if (problem !== undefined) {
      log.warn('ignoring container label %s=%s: %s', JSON.stringify(name), JSON.stringify(value), problem);
      continue;
    }
    out[key] = value;
  }
  return out;
}
