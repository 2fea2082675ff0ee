#!/usr/bin/env node
import { runCalicoctl } from '../cli/calicoctl';
import { errorMessage } from '../lib/errors';

runCalicoctl(process.argv.slice(2), process.env, { out: (text) => process.stdout.write(`${text}\n`) }).then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`calicoctl: ${errorMessage(err)}\n`);
    process.exit(1);
  },
);
