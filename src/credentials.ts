/**
 * Where the AWS credentials that sign tokens come from: explicit `credentials`, a `profile`, the
 * Lambda environment (`AWS_ACCESS_KEY_ID`, …), then the AWS SDK's default chain. The profile and
 * default-chain paths need the optional peer `@aws-sdk/credential-providers`, loaded only when
 * used, with a `require` bundlers cannot see (the SDK weighs hundreds of KB; in Lambda it resolves
 * from the runtime's own copy through `NODE_PATH`).
 */
import {
  type AwsCredentialIdentity,
  type AwsCredentialIdentityProvider,
  type CredentialSource,
  isIdentity,
} from './config.js';
import { DsqlTokenError } from './errors.js';

type Env = Readonly<Record<string, string | undefined>>;

/** Name of the optional peer dependency that provides profile and default-chain credentials. */
export const CREDENTIAL_PROVIDERS_MODULE = '@aws-sdk/credential-providers';

let nodeRequire: NodeJS.Require | undefined;

/**
 * Loads an optional dependency at run time without letting a bundler see it (CommonJS has
 * `require`; ESM gets one from `createRequire`, which honours `NODE_PATH`).
 * @param purpose What needs it, for the message ("profile credentials").
 * @throws {@link DsqlTokenError} telling the user to install it when it is missing.
 * @example
 * const sdk = await loadOptionalModule('@aws-sdk/credential-providers', 'profile credentials');
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
 * Lambda sets), or `undefined` without the key pair. The secret parts are non-enumerable.
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

/** A short, secret-free description of a credential source, for messages. */
export function describeCredentialSource(source: CredentialSource): string {
  return `${source.kind === 'profile' ? `profile "${source.profile}"` : source.kind} credentials`;
}

/**
 * Turns a {@link CredentialSource} into a provider. Nothing is loaded or read until it is called;
 * an SDK provider is created once. Every failure is a {@link DsqlTokenError} with the original as `cause`.
 * @param env Environment of the `environment` source, read on every call. Default: `process.env`.
 * @example
 * const { accessKeyId } = await createCredentialsProvider({ kind: 'profile', profile: 'dev' })();
 */
export function createCredentialsProvider(
  source: CredentialSource,
  env: Env = process.env,
): AwsCredentialIdentityProvider {
  const description = describeCredentialSource(source);
  let sdk: AwsCredentialIdentityProvider | undefined;
  return async () => {
    let c: Partial<AwsCredentialIdentity> | undefined;
    try {
      if (source.kind === 'explicit')
        c = typeof source.value === 'function' ? await source.value() : source.value;
      else if (source.kind === 'environment') c = credentialsFromEnvironment(env);
      if (!c && source.kind !== 'explicit') {
        if (!sdk) {
          const m = await loadOptionalModule<{
            fromIni(o: { profile: string }): AwsCredentialIdentityProvider;
            fromNodeProviderChain(): AwsCredentialIdentityProvider;
          }>(CREDENTIAL_PROVIDERS_MODULE, description);
          sdk =
            source.kind === 'profile' ? m.fromIni({ profile: source.profile }) : m.fromNodeProviderChain();
        }
        c = await sdk();
      }
    } catch (err) {
      throw err instanceof DsqlTokenError
        ? err
        : new DsqlTokenError(`Could not resolve ${description}`, { cause: err });
    }
    if (!isIdentity(c)) throw new DsqlTokenError(`${description} are incomplete or invalid`);
    return c;
  };
}
