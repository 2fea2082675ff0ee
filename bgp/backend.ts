// How container routes cross between hosts (CALICO_NETWORKING_BACKEND, Calico's names).
export type NetworkingBackend = 'bird' | 'vxlan' | 'none';
export const NETWORKING_BACKENDS: readonly NetworkingBackend[] = ['bird', 'vxlan', 'none'];
