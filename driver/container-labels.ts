// Docker container labels org.projectcalico.label.<key>=<value> become endpoint labels
// <key>=<value>. Labels end up in selectors and ipset membership, so anything that is not a valid
// label key or value is dropped (and logged) rather than stored.
import { logger } from '../lib/log';

export const LABEL_PREFIX = 'org.projectcalico.label.';

const log = logger('labels');
// Kubernetes-style: optional DNS prefix, then a name of letters, digits, '-', '_', '.'.
const KEY = /^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/)?[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$/;
const VALUE = /^([A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?$/;

export function containerLabelsToEndpointLabels(containerLabels: Readonly<Record<string, string>>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, value] of Object.entries(containerLabels)) {
    if (!name.startsWith(LABEL_PREFIX)) continue;
    const key = name.slice(LABEL_PREFIX.length);
    if (!KEY.test(key) || !VALUE.test(value)) {
      log.warn('ignoring container label %s=%s: not a valid Calico label', JSON.stringify(name), JSON.stringify(value));
      continue;
    }
    out[key] = value;
  }
  return out;
}
