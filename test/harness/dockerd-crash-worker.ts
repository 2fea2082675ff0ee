// Child process for the single-host reaper test: starts an isolated dockerd with a running
// container and a plugin, prints the dockerd's directory, the plugin's data directory and chain
// prefix, and waits to be SIGKILLed (no stop(), no exit hook).
import Docker from 'dockerode';
import { runContainer } from './containers.js';
import { startDockerd } from './dockerd.js';
import { importTestImage, TEST_IMAGE } from './image.js';
import { startPlugin } from './plugin.js';

async function main(): Promise<void> {
  const dockerd = await startDockerd();
  await importTestImage(dockerd.socketPath);
  await runContainer(new Docker({ socketPath: dockerd.socketPath }), { image: TEST_IMAGE, network: 'none' });
  const plugin = await startPlugin({ dockerSocket: dockerd.socketPath });
  process.stdout.write(`${dockerd.baseDir} ${plugin.env['CALICO_DATA_DIR'] ?? ''} ${plugin.chainPrefix}\n`);
  await new Promise(() => undefined);
}

main().catch((err: unknown) => {
  process.stderr.write(`${String(err)}\n`);
  process.exit(1);
});
