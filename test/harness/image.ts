// A tiny test image without a registry: Debian's static /bin/busybox (busybox-static, no shared
// libraries needed) plus applet symlinks, tarred and imported through the Docker API
// (POST /images/create?fromSrc=-).

import { copyFile, mkdir, mkdtemp, rm, symlink, writeFile, chmod } from 'node:fs/promises';
import { createReadStream } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { run } from '../../dataplane/exec.js';

export const BUSYBOX = '/bin/busybox';
export const TEST_IMAGE = 'calico-test/busybox:latest';

/** Applets linked into /bin. */
export const APPLETS = [
  'sh', 'ping', 'ping6', 'ip', 'nc', 'true', 'false', 'sleep', 'cat', 'ifconfig', 'route', 'wget',
  'httpd', 'hostname', 'echo', 'ls', 'grep', 'ps', 'kill', 'env', 'nslookup', 'traceroute', 'netstat',
] as const;

/** Split `repo[:tag]` (a registry host may carry a port: the tag is after the last '/'). */
export function splitRef(ref: string): { repo: string; tag: string } {
  const slash = ref.lastIndexOf('/');
  const colon = ref.lastIndexOf(':');
  if (colon > slash) return { repo: ref.slice(0, colon), tag: ref.slice(colon + 1) };
  return { repo: ref, tag: 'latest' };
}

/** Build the rootfs tarball in a temp dir; returns its path and a cleanup function. */
export async function buildBusyboxRootfsTar(): Promise<{ tarPath: string; cleanup: () => Promise<void> }> {
  const dir = await mkdtemp(path.join(tmpdir(), 'ctest-img-'));
  const cleanup = () => rm(dir, { recursive: true, force: true });
  try {
    const root = path.join(dir, 'rootfs');
    for (const d of ['bin', 'etc', 'proc', 'sys', 'dev', 'root', 'var/www', 'tmp']) {
      await mkdir(path.join(root, d), { recursive: true });
    }
    await chmod(path.join(root, 'tmp'), 0o1777);
    await copyFile(BUSYBOX, path.join(root, 'bin/busybox'));
    await chmod(path.join(root, 'bin/busybox'), 0o755);
    for (const a of APPLETS) await symlink('busybox', path.join(root, 'bin', a));
    await writeFile(path.join(root, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
    await writeFile(path.join(root, 'etc/group'), 'root:x:0:\n');
    const tarPath = path.join(dir, 'rootfs.tar');
    await run(
      'tar',
      ['--numeric-owner', '--owner=0', '--group=0', '-C', root, '-cf', tarPath, '.'],
      'build test image tarball',
    );
    return { tarPath, cleanup };
  } catch (err) {
    await cleanup();
    throw err;
  }
}

/**
 * Import the busybox rootfs as `tag` (e.g. 'calico-test/busybox:latest') into the dockerd at
 * `socketPath`. Resolves with the image reference.
 */
export async function importTestImage(socketPath: string, tag: string = TEST_IMAGE): Promise<string> {
  const { tarPath, cleanup } = await buildBusyboxRootfsTar();
  try {
    return await importRootfsTar(socketPath, tarPath, tag);
  } finally {
    await cleanup();
  }
}

/** Import an already built rootfs tarball (buildBusyboxRootfsTar) as `tag`: one tarball for many
 * dockerds. Resolves with the image reference. */
export async function importRootfsTar(socketPath: string, tarPath: string, tag: string = TEST_IMAGE): Promise<string> {
  const { repo, tag: t } = splitRef(tag);
  const q = new URLSearchParams({ fromSrc: '-', repo, tag: t });
  q.append('changes', 'CMD ["/bin/sh"]');
  q.append('changes', 'ENV PATH=/bin:/sbin:/usr/bin:/usr/sbin');
  await postStream(socketPath, `/images/create?${q.toString()}`, tarPath);
  return `${repo}:${t}`;
}

/** POST a file as the body; the answer is a stream of JSON progress messages, any of which may
 * carry an error even with status 200. */
function postStream(socketPath: string, urlPath: string, file: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { socketPath, path: urlPath, method: 'POST', headers: { 'Content-Type': 'application/x-tar' } },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const body = Buffer.concat(chunks).toString('utf8');
          if (res.statusCode !== 200) {
            reject(new Error(`image import failed: HTTP ${res.statusCode}: ${body.trim()}`));
            return;
          }
          for (const line of body.split('\n')) {
            if (line.trim() === '') continue;
            try {
              const msg = JSON.parse(line) as { error?: string; errorDetail?: { message?: string } };
              if (msg.error || msg.errorDetail) {
                reject(new Error(`image import failed: ${msg.errorDetail?.message ?? msg.error}`));
                return;
              }
            } catch {
              // non-JSON progress line
            }
          }
          resolve();
        });
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    const src = createReadStream(file);
    src.on('error', (err) => req.destroy(err));
    src.pipe(req);
  });
}
