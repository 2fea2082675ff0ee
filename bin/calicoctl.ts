#!/usr/bin/env node
import { text } from 'node:stream/consumers';
import { runCalicoctl } from '../cli/calicoctl';
import { errorMessage } from '../lib/errors';

runCalicoctl(process.argv.slice(2), process.env, {
  out: (line) => process.stdout.write(`${line}\n`),
  readStdin: () => text(process.stdin),
}).then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`calicoctl: ${errorMessage(err)}\n`);
    process.exit(1);
  },
);
