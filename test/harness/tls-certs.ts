// Certificates for one test's etcd TLS setup, made with openssl: a throwaway CA, a server
// certificate for 127.0.0.1 and a client certificate. EC P-256 keys: quick to make. Everything
// lives in a temp directory the caller removes (cleanup()).
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { run } from '../../dataplane/exec';

export interface TestCertificates {
  readonly dir: string;
  readonly caFile: string;
  readonly serverCertFile: string;
  readonly serverKeyFile: string;
  readonly clientCertFile: string;
  readonly clientKeyFile: string;
  cleanup(): Promise<void>;
}

const KEY_ARGS = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

export async function makeTestCertificates(clientCommonName: string): Promise<TestCertificates> {
  if (!/^[A-Za-z0-9._-]{1,64}$/.test(clientCommonName)) throw new Error(`invalid common name ${JSON.stringify(clientCommonName)}`);
  const dir = await mkdtemp(join(tmpdir(), 'calico-test-tls-'));
  const f = (name: string): string => join(dir, name);
  const openssl = (args: string[], what: string): Promise<unknown> => run('openssl', args, what, { timeoutMs: 30_000 });
  try {
    await openssl(['req', '-x509', ...KEY_ARGS, '-keyout', f('ca.key'), '-out', f('ca.pem'), '-days', '2', '-subj', '/CN=calico-test-ca'], 'make test CA');
    await writeFile(f('server.ext'), 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n');
    await writeFile(f('client.ext'), 'extendedKeyUsage=clientAuth\n');
    for (const [name, cn] of [['server', 'etcd-test'], ['client', clientCommonName]] as const) {
      await openssl(['req', ...KEY_ARGS, '-keyout', f(`${name}.key`), '-out', f(`${name}.csr`), '-subj', `/CN=${cn}`], `make ${name} key`);
      await openssl(
        ['x509', '-req', '-in', f(`${name}.csr`), '-CA', f('ca.pem'), '-CAkey', f('ca.key'), '-CAcreateserial', '-days', '2', '-extfile', f(`${name}.ext`), '-out', f(`${name}.pem`)],
        `sign ${name} certificate`,
      );
    }
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
  return {
    dir,
    caFile: f('ca.pem'),
    serverCertFile: f('server.pem'),
    serverKeyFile: f('server.key'),
    clientCertFile: f('client.pem'),
    clientKeyFile: f('client.key'),
    cleanup: () => rm(dir, { recursive: true, force: true }),
  };
}
