// Small helpers over dockerode for the end-to-end tests: networks and long-running containers
// that are always removed, and exec with the exit code and output.
import Docker from 'dockerode';
import { PassThrough } from 'node:stream';

export interface NetworkSpec {
  readonly name: string;
  readonly driver: string;
  readonly ipamDriver: string;
  readonly subnet?: string;
  readonly ipv6?: boolean;
}

export async function createNetwork(docker: Docker, spec: NetworkSpec): Promise<Docker.Network> {
  return docker.createNetwork({
    Name: spec.name,
    Driver: spec.driver,
    CheckDuplicate: true,
    EnableIPv6: spec.ipv6 ?? false,
    IPAM: { Driver: spec.ipamDriver, Config: spec.subnet === undefined ? [] : [{ Subnet: spec.subnet }] },
  });
}

export interface RunSpec {
  readonly image: string;
  readonly network: string;
  readonly ip?: string;
  readonly ipv6?: string;
  readonly cmd?: string[];
  readonly labels?: Record<string, string>;
  /** Docker's restart policy (`always`: started again when dockerd starts). */
  readonly restart?: 'always' | 'unless-stopped';
}

/** Starts a container that keeps running (sleep), attached to one network. */
export async function runContainer(docker: Docker, spec: RunSpec): Promise<Docker.Container> {
  const ipam = spec.ip !== undefined || spec.ipv6 !== undefined
    ? { IPAMConfig: { ...(spec.ip !== undefined && { IPv4Address: spec.ip }), ...(spec.ipv6 !== undefined && { IPv6Address: spec.ipv6 }) } }
    : {};
  const container = await docker.createContainer({
    Image: spec.image,
    Cmd: spec.cmd ?? ['sleep', '3600'],
    Labels: spec.labels ?? {},
    HostConfig: { NetworkMode: spec.network, ...(spec.restart !== undefined && { RestartPolicy: { Name: spec.restart } }) },
    NetworkingConfig: { EndpointsConfig: { [spec.network]: ipam } },
  });
  try {
    await container.start();
  } catch (err) {
    await container.remove({ force: true });
    throw err;
  }
  return container;
}

export interface ContainerAddress {
  readonly endpointId: string;
  readonly ipv4: string;
  readonly ipv6: string;
}

export async function addressOn(container: Docker.Container, network: string): Promise<ContainerAddress> {
  const info = await container.inspect();
  const ep = info.NetworkSettings.Networks[network];
  if (ep === undefined) throw new Error(`container ${info.Id.slice(0, 12)} is not on ${network}`);
  return { endpointId: ep.EndpointID, ipv4: ep.IPAddress, ipv6: ep.GlobalIPv6Address };
}

export async function exec(container: Docker.Container, cmd: string[]): Promise<{ code: number; output: string }> {
  const e = await container.exec({ Cmd: cmd, AttachStdout: true, AttachStderr: true });
  const stream = await e.start({ hijack: true, stdin: false });
  const sink = new PassThrough();
  let output = '';
  sink.on('data', (b: Buffer) => (output += b.toString()));
  container.modem.demuxStream(stream, sink, sink);
  await new Promise<void>((resolve, reject) => {
    stream.once('end', () => resolve());
    stream.once('error', reject);
  });
  const { ExitCode } = await e.inspect();
  return { code: ExitCode ?? -1, output };
}

/** Removes a network once Docker has let go of its endpoints. `docker rm -f` can answer before
 * Docker's own clean-up of the container's endpoint has ended (seen once in 40 parallel
 * removals), and `docker network rm` then refuses with "has active endpoints"; a plugin that
 * failed to delete an endpoint still fails here, after `timeoutMs`. */
export async function removeNetwork(network: Docker.Network, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      await network.remove();
      return;
    } catch (err) {
      if (!/active endpoints/.test(String(err)) || Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 200));
    }
  }
}

/** Teardown helper: removal errors are ignored because the resource may already be gone. */
export async function removeQuietly(containers: Iterable<Docker.Container>, networks: Iterable<Docker.Network> = []): Promise<void> {
  await Promise.all([...containers].map((c) => c.remove({ force: true }).catch(() => undefined)));
  for (const n of networks) await removeNetwork(n).catch(() => undefined);
}
