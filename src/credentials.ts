/**
 * Where the AWS credentials that sign tokens come from, in this order: explicit `credentials`,
 * a `profile`, the Lambda environment (`AWS_ACCESS_KEY_ID`, …), then the AWS SDK's default
 * chain.
 *
 * The environment path needs nothing: inside Lambda it is the common case and costs a few
 * property reads. The profile and default-chain paths need `@aws-sdk/credential-providers`, an
 * optional peer dependency that is loaded only when one of them is actually used. It is loaded
 * with a `require` whose module name is a variable, so bundlers leave it out of user bundles
 * (the SDK weighs hundreds of KB) and, in Lambda, it resolves from the runtime's own copy of the
 * SDK through `NODE_PATH`.
 */
import { createRequire } from 'node:module';
import type { AwsCredentialIdentity, AwsCredentialIdentityProvider, CredentialSource } from './config.js';
import { DsqlTokenError } from './errors.js';

type Env = Readonly<Record<string, string | undefined>>;

/** The part of `@aws-sdk/credential-providers` this library uses. */
interface CredentialProvidersModule {
  fromIni(init: { profile: string }): AwsCredentialIdentityProvider;
  fromNodeProviderChain(init?: Record<string, unknown>): AwsCredentialIdentityProvider;
}

/** Name of the optional peer dependency that provides profile and default-chain credentials. */
export const CREDENTIAL_PROVIDERS_MODULE = '@aws-sdk/credential-providers';

let nodeRequire: NodeJS.Require | undefined;

/**
 * Loads an optional dependency at run time without letting a bundler see it. CommonJS builds
 * (ours and users' bundles) have `require`; ESM gets one from `createRequire`, whose lookup also
 * honours `NODE_PATH`, where Lambda keeps its SDK.
 * @throws {@link DsqlTokenError} telling the user to install it when the module is missing.
 */
export function loadOptionalModule<T>(name: string, purpose: string): T {
  nodeRequire ??= typeof require === 'function' ? require : createRequire(import.meta.url);
  try {
    return nodeRequire(name) as T;
  } catch (err) {
    throw new DsqlTokenError(
      `${purpose} needs the optional package ${name}; install it (npm install ${name}) or pass credentials explicitly`,
      { cause: err },
    );
  }
}

/** Hides the secret parts of a credentials object from `JSON.stringify` and `console.log`. */
function withHiddenSecrets(credentials: AwsCredentialIdentity): AwsCredentialIdentity {
  const out = { accessKeyId: credentials.accessKeyId } as AwsCredentialIdentity;
  Object.defineProperty(out, 'secretAccessKey', { value: credentials.secretAccessKey, enumerable: false });
  if (credentials.sessionToken !== undefined) {
    Object.defineProperty(out, 'sessionToken', { value: credentials.sessionToken, enumerable: false });
  }
  if (credentials.expiration !== undefined)
    (out as { expiration?: Date }).expiration = credentials.expiration;
  return out;
}

/**
 * Credentials from `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN` and
 * `AWS_CREDENTIAL_EXPIRATION` (what Lambda sets for the function's role), or `undefined` when the
 * key pair is not set. The returned object hides its secrets from JSON and `console.log`.
 * @example
 * const creds = credentialsFromEnvironment(process.env);
 */
export function credentialsFromEnvironment(env: Env = process.env): AwsCredentialIdentity | undefined {
  const accessKeyId = env.AWS_ACCESS_KEY_ID;
  const secretAccessKey = env.AWS_SECRET_ACCESS_KEY;
  if (!accessKeyId || !secretAccessKey) return undefined;
  const expiration = env.AWS_CREDENTIAL_EXPIRATION ? new Date(env.AWS_CREDENTIAL_EXPIRATION) : undefined;
  return withHiddenSecrets({
    accessKeyId,
    secretAccessKey,
    sessionToken: env.AWS_SESSION_TOKEN || undefined,
    expiration: expiration && !Number.isNaN(expiration.getTime()) ? expiration : undefined,
  });
}

function checkCredentials(value: unknown, source: string): AwsCredentialIdentity {
  const c = value as Partial<AwsCredentialIdentity> | null | undefined;
  if (
    c === null ||
    typeof c !== 'object' ||
    typeof c.accessKeyId !== 'string' ||
    c.accessKeyId === '' ||
    typeof c.secretAccessKey !== 'string' ||
    c.secretAccessKey === ''
  ) {
    throw new DsqlTokenError(
      `${source} returned no usable credentials (accessKeyId and secretAccessKey required)`,
    );
  }
  if (
    c.expiration !== undefined &&
    !(c.expiration instanceof Date && !Number.isNaN(c.expiration.getTime()))
  ) {
    throw new DsqlTokenError(`${source} returned credentials with an invalid expiration`);
  }
  return c as AwsCredentialIdentity;
}

/** A short, secret-free description of a credential source, for error messages. */
export function describeCredentialSource(source: CredentialSource): string {
  switch (source.kind) {
    case 'explicit':
      return 'the credentials option';
    case 'profile':
      return `AWS profile "${source.profile}"`;
    case 'environment':
      return 'the AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY environment variables';
    default:
      return 'the AWS SDK default credential chain';
  }
}

/**
 * Turns a {@link CredentialSource} (decided by `resolveConfig`) into a provider. Nothing is
 * loaded or read until the provider is first called; SDK providers are created once and reused.
 * Every failure surfaces as a {@link DsqlTokenError} whose `cause` is the original error.
 * @param source Where to take credentials from.
 * @param env Environment for the `environment` source, read on every call. Default: `process.env`.
 * @example
 * const provider = createCredentialsProvider({ kind: 'profile', profile: 'dev' });
 * const { accessKeyId } = await provider();
 */
export function createCredentialsProvider(
  source: CredentialSource,
  env: Env = process.env,
): AwsCredentialIdentityProvider {
  const description = describeCredentialSource(source);
  let sdkProvider: AwsCredentialIdentityProvider | undefined;
  const fromSdk = (): AwsCredentialIdentityProvider => {
    if (sdkProvider === undefined) {
      const sdk = loadOptionalModule<CredentialProvidersModule>(
        CREDENTIAL_PROVIDERS_MODULE,
        source.kind === 'profile' ? 'Reading credentials from a profile' : 'The default credential chain',
      );
      sdkProvider =
        source.kind === 'profile' ? sdk.fromIni({ profile: source.profile }) : sdk.fromNodeProviderChain();
    }
    return sdkProvider;
  };
  return async function resolveDsqlCredentials(): Promise<AwsCredentialIdentity> {
    let value: unknown;
    try {
      switch (source.kind) {
        case 'explicit':
          value = typeof source.value === 'function' ? await source.value() : source.value;
          break;
        case 'environment':
          // Read on every call: cheap, and it follows a runtime that rotates the variables.
          value = credentialsFromEnvironment(env) ?? (await fromSdk()());
          break;
        default:
          value = await fromSdk()();
      }
    } catch (err) {
      if (err instanceof DsqlTokenError) throw err;
      throw new DsqlTokenError(`Could not resolve AWS credentials from ${description}`, { cause: err });
    }
    return checkCredentials(value, description);
  };
}
