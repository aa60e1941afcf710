/**
 * CRUD over `items` behind an API Gateway HTTP API (payload format 2.0), with middy:
 *
 *   GET /items            list (newest first, at most 100)
 *   POST /items           create: {"name": "...", "priceCents": 123} -> 201 with the item
 *   GET /items/{id}       read
 *   PUT /items/{id}       update name and/or priceCents
 *   DELETE /items/{id}    delete -> 204
 *
 * `dsql()` gives the handler `context.dsql`: statements on the module-scoped pool (created on the
 * first invocation from the environment: DSQL_ENDPOINT, PGUSER, AWS_REGION and the function's
 * credentials), bounded by the invocation's deadline. Single-statement writes need no explicit
 * transaction: each statement commits on its own, and DSQL reports a conflict on it as an error
 * the caller may retry (here: 409).
 */
import middy from '@middy/core';
import type { APIGatewayProxyEventV2, APIGatewayProxyStructuredResultV2 } from 'aws-lambda';
import { isOccError } from 'dsql-lambda';
import { dsql } from 'dsql-lambda/middy';

interface ItemRow {
  id: string;
  name: string;
  price_cents: string; // BIGINT arrives as a string: pg does not guess a JavaScript number for it
  updated_at: Date;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

const reply = (statusCode: number, body?: unknown): APIGatewayProxyStructuredResultV2 => ({
  statusCode,
  headers: body === undefined ? {} : { 'content-type': 'application/json' },
  body: body === undefined ? '' : JSON.stringify(body),
});

const toItem = (row: ItemRow) => ({
  id: row.id,
  name: row.name,
  priceCents: Number(row.price_cents),
  updatedAt: row.updated_at.toISOString(),
});

/** The request body as `{ name?, priceCents? }`, or an error message for a 400. */
function parseItem(event: APIGatewayProxyEventV2): { name?: string; priceCents?: number } | string {
  let body: unknown;
  try {
    const raw = event.isBase64Encoded ? Buffer.from(event.body ?? '', 'base64').toString() : event.body;
    body = JSON.parse(raw || 'null');
  } catch {
    return 'the body is not JSON';
  }
  if (typeof body !== 'object' || body === null) return 'the body must be a JSON object';
  const { name, priceCents } = body as Record<string, unknown>;
  if (name !== undefined && (typeof name !== 'string' || name.trim() === '' || name.length > 200)) {
    return 'name must be a non-empty string of at most 200 characters';
  }
  if (priceCents !== undefined && !(Number.isSafeInteger(priceCents) && (priceCents as number) >= 0)) {
    return 'priceCents must be a non-negative integer';
  }
  return { name: name as string | undefined, priceCents: priceCents as number | undefined };
}

export const handler = middy<APIGatewayProxyEventV2, APIGatewayProxyStructuredResultV2>()
  .use(dsql())
  .handler(async (event, context) => {
    const db = context.dsql;
    const method = event.requestContext.http.method;
    const id = event.pathParameters?.id;
    if (id !== undefined && !UUID.test(id)) return reply(404, { error: 'no such item' });

    try {
      if (id === undefined && method === 'GET') {
        const { rows } = await db.query<ItemRow>('SELECT * FROM items ORDER BY updated_at DESC LIMIT 100');
        return reply(200, { items: rows.map(toItem) });
      }
      if (id === undefined && method === 'POST') {
        const input = parseItem(event);
        if (typeof input === 'string') return reply(400, { error: input });
        if (input.name === undefined) return reply(400, { error: 'name is required' });
        const { rows } = await db.query<ItemRow>(
          'INSERT INTO items (name, price_cents) VALUES ($1, $2) RETURNING *',
          [input.name, input.priceCents ?? 0],
        );
        return reply(201, toItem(rows[0]!));
      }
      if (id !== undefined && method === 'GET') {
        const { rows } = await db.query<ItemRow>('SELECT * FROM items WHERE id = $1', [id]);
        return rows[0] ? reply(200, toItem(rows[0])) : reply(404, { error: 'no such item' });
      }
      if (id !== undefined && method === 'PUT') {
        const input = parseItem(event);
        if (typeof input === 'string') return reply(400, { error: input });
        const { rows } = await db.query<ItemRow>(
          `UPDATE items SET name = coalesce($2, name), price_cents = coalesce($3, price_cents), updated_at = now()
           WHERE id = $1 RETURNING *`,
          [id, input.name ?? null, input.priceCents ?? null],
        );
        return rows[0] ? reply(200, toItem(rows[0])) : reply(404, { error: 'no such item' });
      }
      if (id !== undefined && method === 'DELETE') {
        const { rowCount } = await db.query('DELETE FROM items WHERE id = $1', [id]);
        return rowCount ? reply(204) : reply(404, { error: 'no such item' });
      }
      return reply(405, { error: `${method} is not supported here` });
    } catch (err) {
      // A concurrent write to the same item won at commit: the client may retry.
      if (isOccError(err)) return reply(409, { error: 'the item changed concurrently; retry' });
      throw err;
    }
  });
