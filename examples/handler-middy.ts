/**
 * A middy handler: `dsql()` gives the handler a typed `context.dsql`. The pool is created on the
 * first invocation from the environment (DSQL_ENDPOINT, AWS_REGION and the credentials Lambda
 * sets) and reused, freeze-safe, by every later invocation of this execution environment.
 */
import middy from '@middy/core';
import { dsql } from 'dsql-lambda/middy';

interface GetItemEvent {
  pathParameters?: { id?: string };
}

export const handler = middy<GetItemEvent>()
  .use(dsql())
  .handler(async (event, context) => {
    const id = event.pathParameters?.id;
    if (!id) return { statusCode: 400, body: JSON.stringify({ error: 'id is required' }) };
    const { rows } = await context.dsql.query<{ id: string; name: string }>(
      'SELECT id, name FROM items WHERE id = $1',
      [id],
    );
    return rows[0]
      ? { statusCode: 200, body: JSON.stringify(rows[0]) }
      : { statusCode: 404, body: JSON.stringify({ error: 'not found' }) };
  });
