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
 * honours `NODE_PATH`, where Lambda keeps its SDK. `node:module` is fetched only here, never
 * imported at the top: loading it costs ≈ 1 ms of cold start on Node 22.
 * @param purpose What needs it, for the message ("profile credentials").
 * @throws {@link DsqlTokenError} telling the user to install it when the module is missing.
 */
export async function loadOptionalModule<T>(name: string, purpose: string): Promise<T> {
  try {
    nodeRequire ??=
      typeof require === 'function'
        ? require
        : (process.getBuiltinModule?.('node:module') ?? (await import('node:module'))).createRequire(
            import.meta.url,
          );
    return nodeRequire(name) as T;
  } catch (err) {
    throw new DsqlTokenError(`${purpose} need the optional package ${name}: npm install ${name}`, {
      cause: err,
    });
  }
}

/**
 * Credentials from `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN` (what
 * Lambda sets for the function's role; they stay valid for the life of the execution
 * environment, so no expiration is read), or `undefined` when the key pair is not set. The
 * secret parts of the returned object are non-enumerable, so they stay out of `JSON.stringify`
 * and `console.log`.
 * @example
 * const creds = credentialsFromEnvironment(process.env);
 */
export function credentialsFromEnvironment(env: Env = process.env): AwsCredentialIdentity | undefined {
  const { AWS_ACCESS_KEY_ID: accessKeyId, AWS_SECRET_ACCESS_KEY: secret } = env;
  if (!accessKeyId || !secret) return undefined;
  return Object.defineProperties(
    { accessKeyId },
    { secretAccessKey: { value: secret }, sessionToken: { value: env.AWS_SESSION_TOKEN || undefined } },
  ) as AwsCredentialIdentity;
}

/** A short, secret-free description of a credential source, for error messages. */
export function describeCredentialSource(source: CredentialSource): string {
  return `${source.kind === 'profile' ? `profile "${source.profile}"` : source.kind} credentials`;
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
  const fromSdk = async (): Promise<AwsCredentialIdentityProvider> => {
    if (sdkProvider === undefined) {
      const sdk = await loadOptionalModule<CredentialProvidersModule>(
        CREDENTIAL_PROVIDERS_MODULE,
        description,
      );
      sdkProvider =
        source.kind === 'profile' ? sdk.fromIni({ profile: source.profile }) : sdk.fromNodeProviderChain();
    }
    return sdkProvider;
  };
  return async function resolveDsqlCredentials(): Promise<AwsCredentialIdentity> {
    let c: Partial<AwsCredentialIdentity> | undefined;
    try {
      c =
        source.kind === 'explicit'
          ? typeof source.value === 'function'
            ? await source.value()
            : source.value
          : // The environment is read on every call: cheap, and it follows rotated variables.
            (source.kind === 'environment' && credentialsFromEnvironment(env)) || (await (await fromSdk())());
    } catch (err) {
      throw err instanceof DsqlTokenError
        ? err
        : new DsqlTokenError(`Could not resolve AWS credentials from ${description}`, { cause: err });
    }
    if (
      !c?.accessKeyId ||
      !c.secretAccessKey ||
      (c.expiration !== undefined && !(c.expiration instanceof Date && c.expiration.getTime() >= 0))
    ) {
      throw new DsqlTokenError(
        `${description}: accessKeyId, secretAccessKey or expiration missing or invalid`,
      );
    }
    return c as AwsCredentialIdentity;
  };
}
