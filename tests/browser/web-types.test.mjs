// The package's TypeScript types (web/index.d.ts) compile for a strict TypeScript user:
// fixtures/consumer.ts calls the whole API and marks misuses that must not compile.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';

const HERE = fileURLToPath(new URL('.', import.meta.url));
const TSC = `${HERE}node_modules/typescript/bin/tsc`;

test('web/index.d.ts type-checks with tsc --strict', { timeout: 120_000 }, () => {
  assert.ok(fs.existsSync(TSC), 'typescript is missing: npm ci in tests/browser');
  try {
    execFileSync(process.execPath, [TSC, '-p', HERE], { encoding: 'utf8', stdio: 'pipe' });
  } catch (e) {
    assert.fail(`tsc found errors:\n${e.stdout}${e.stderr}`);
  }
});
