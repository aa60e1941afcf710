/**
 * What a token costs: signing one in-process (`signAuthToken`, node:crypto), the same with
 * `@aws-sdk/dsql-signer` for comparison, the first signature in a fresh process, and what a new
 * connection pays to get its password from the token cache (the cached path).
 *
 *   node --import tsx bench/token.ts      # writes bench/results/token-node<major>.json
 */
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DsqlSigner } from '@aws-sdk/dsql-signer';
import { resolveConfig } from '../src/config.js';
import { signAuthToken } from '../src/sigv4.js';
import { tokenCacheFor } from '../src/token.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const HOST = 'abcdefghijklmnopqrstuvwxyz.dsql.us-east-1.on.aws';
const credentials = {
  accessKeyId: 'ASIAEXAMPLEEXAMPLE01',
  secretAccessKey: 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY',
  sessionToken: `IQoJb3JpZ2luX2VjE${'A'.repeat(900)}/+=`,
};

function microsPer(iterations: number, fn: (i: number) => void): number {
  const start = process.hrtime.bigint();
  for (let i = 0; i < iterations; i++) fn(i);
  return Number(process.hrtime.bigint() - start) / 1000 / iterations;
}

async function microsPerAsync(iterations: number, fn: () => Promise<unknown>): Promise<number> {
  const start = process.hrtime.bigint();
  for (let i = 0; i < iterations; i++) await fn();
  return Number(process.hrtime.bigint() - start) / 1000 / iterations;
}

const round = (n: number) => Math.round(n * 100) / 100;

// First signature in a fresh process: what the first connection after a cold start pays.
const firstSign = spawnSync(
  process.execPath,
  [
    '--import',
    'tsx',
    '-e',
    `import('${join(root, 'src/sigv4.ts')}').then(({ signAuthToken }) => {
      const t0 = performance.now();
      signAuthToken({ host: '${HOST}', region: 'us-east-1', action: 'DbConnectAdmin', tokenDurationSecs: 900 },
        { accessKeyId: 'AKID', secretAccessKey: 'secret', sessionToken: 'tok' }, Date.now());
      process.stdout.write(String(performance.now() - t0));
    })`,
  ],
  { encoding: 'utf8', cwd: root },
);

const config = resolveConfig({ host: HOST, credentials: async () => credentials }, {});
const sign = (i: number) => signAuthToken(config, credentials, 1_800_000_000_000 + i * 1000);
microsPer(2_000, sign); // warm up
const signMicros = microsPer(20_000, sign);

const signer = new DsqlSigner({ hostname: HOST, region: 'us-east-1', credentials, expiresIn: 900 });
await microsPerAsync(500, () => signer.getDbConnectAdminAuthToken());
const sdkMicros = await microsPerAsync(5_000, () => signer.getDbConnectAdminAuthToken());

const cache = tokenCacheFor(config);
await cache.get();
await microsPerAsync(10_000, () => cache.get());
const cachedMicros = await microsPerAsync(200_000, () => cache.get());

const result = {
  node: process.version,
  measuredAt: new Date().toISOString(),
  signAuthTokenMicros: round(signMicros),
  dsqlSignerMicros: round(sdkMicros),
  firstSignInFreshProcessMs: round(Number(firstSign.stdout)),
  cachedTokenPerNewConnectionMicros: round(cachedMicros),
  tokenBytes: sign(0).length,
  notes:
    'signAuthToken: in-process SigV4 on node:crypto. dsqlSigner: @aws-sdk/dsql-signer with static credentials. cachedTokenPerNewConnection: tokenCacheFor(config).get() on the cached path, what pg pays per new physical connection.',
};
const file = join(root, `bench/results/token-node${process.versions.node.split('.')[0]}.json`);
writeFileSync(file, `${JSON.stringify(result, null, 2)}\n`);
console.log(`sign (node:crypto)          ${result.signAuthTokenMicros} µs/token`);
console.log(`sign (@aws-sdk/dsql-signer) ${result.dsqlSignerMicros} µs/token`);
console.log(`first sign, fresh process   ${result.firstSignInFreshProcessMs} ms`);
console.log(`cached token per connection ${result.cachedTokenPerNewConnectionMicros} µs`);
console.log(`wrote ${file}`);
