// IpamDriver wire types, named as libnetwork names them, with their request decoders.
import { bool, object, record, str, withDefault } from '../lib/validate';

export const IPAM_DRIVER = 'IpamDriver';

export const RequestPoolRequest = object({
  AddressSpace: withDefault(str, ''),
  Pool: withDefault(str, ''),
  SubPool: withDefault(str, ''),
  Options: withDefault(record(str), {}),
  V6: withDefault(bool, false),
});
export type RequestPoolRequest = ReturnType<typeof RequestPoolRequest>;

export const ReleasePoolRequest = object({ PoolID: str });
export type ReleasePoolRequest = ReturnType<typeof ReleasePoolRequest>;

export const RequestAddressRequest = object({
  PoolID: str,
  Address: withDefault(str, ''),
  Options: withDefault(record(str), {}),
});
export type RequestAddressRequest = ReturnType<typeof RequestAddressRequest>;

export const ReleaseAddressRequest = object({ PoolID: str, Address: str });
export type ReleaseAddressRequest = ReturnType<typeof ReleaseAddressRequest>;

export interface RequestPoolResponse {
  PoolID: string;
  Pool: string;
  Data: Record<string, string>;
}

export interface RequestAddressResponse {
  Address: string;
  Data: Record<string, string>;
}

export const GATEWAY_DATA_KEY = 'com.docker.network.gateway';
export const REQUEST_ADDRESS_TYPE = 'RequestAddressType';
export const SERIAL_OPTION = 'com.docker.network.ipam.serial';
