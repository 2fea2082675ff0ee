// Talks to a plugin socket the way Docker does: POST, no Content-Type, raw body.
import { request } from 'node:http';

export interface PluginAnswer {
  readonly status: number;
  readonly contentType: string;
  readonly body: Record<string, unknown>;
}

export function post(socketPath: string, path: string, body: string | Buffer = ''): Promise<PluginAnswer> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, path, method: 'POST', headers: { Accept: 'application/vnd.docker.plugins.v1.2+json', 'Content-Length': Buffer.byteLength(body) } }, (res) => {
      let text = '';
      res.on('data', (b: Buffer) => (text += b.toString()));
      res.on('end', () => {
        try {
          resolve({ status: res.statusCode ?? 0, contentType: res.headers['content-type'] ?? '', body: JSON.parse(text) as Record<string, unknown> });
        } catch (err) {
          reject(new Error(`${path}: answer is not JSON: ${text}`, { cause: err }));
        }
      });
    });
    req.on('error', reject);
    req.end(body);
  });
}
