/**
 * dsql-lambda: Amazon Aurora DSQL from AWS Lambda through node-postgres.
 * @packageDocumentation
 */
export * from './config.js';
export * from './credentials.js';
export * from './errors.js';
export * from './lambda.js';
export * from './pool.js';
export * from './retry.js';
export * from './token.js';
