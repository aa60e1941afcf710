/**
 * An SQS batch, without middy: each record is one order, applied in its own OCC-retried
 * transaction (debit the account, record the order). A record that fails is reported in
 * `batchItemFailures`, so SQS redelivers only that one (the event source mapping needs
 * `FunctionResponseTypes: [ReportBatchItemFailures]`, as in template.yaml); the others are done.
 *
 * Message body: {"orderId": "o-1", "account": "alice", "amount": 250}
 *
 * Redelivery is safe: the order id is the primary key of `orders`, so a record seen twice changes
 * nothing the second time. Records run one after another: they may touch the same account, and
 * running them concurrently would only make them conflict with each other.
 */
import type { Context, SQSBatchResponse, SQSEvent, SQSRecord } from 'aws-lambda';
import { createPool, withRetry } from 'dsql-lambda';

// Module scope: created once per execution environment, no I/O until the first statement.
const pool = createPool();

/** Why a record is not applied and must not simply be retried as is. */
class RejectedOrder extends Error {
  override name = 'RejectedOrder';
}

interface Order {
  orderId: string;
  account: string;
  amount: number;
}

function parseOrder(record: SQSRecord): Order {
  let body: unknown;
  try {
    body = JSON.parse(record.body);
  } catch {
    throw new RejectedOrder('body is not JSON');
  }
  const { orderId, account, amount } = (body ?? {}) as Record<string, unknown>;
  if (typeof orderId !== 'string' || orderId === '') throw new RejectedOrder('orderId must be a string');
  if (typeof account !== 'string' || account === '') throw new RejectedOrder('account must be a string');
  if (!Number.isSafeInteger(amount) || (amount as number) <= 0) {
    throw new RejectedOrder('amount must be a positive integer');
  }
  return { orderId, account, amount: amount as number };
}

/** Applies one order; returns false when it had been applied before. */
async function applyOrder(order: Order, deadline: number): Promise<boolean> {
  return withRetry(
    pool,
    async (tx) => {
      const inserted = await tx.query(
        'INSERT INTO orders (id, account, amount) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING',
        [order.orderId, order.account, order.amount],
      );
      if (inserted.rowCount === 0) return false; // redelivered: applied already
      const debited = await tx.query(
        'UPDATE accounts SET balance = balance - $2 WHERE id = $1 AND balance >= $2',
        [order.account, order.amount],
      );
      // Throwing rolls the transaction back (the order row too) and is not retried: not an OCC error.
      if (debited.rowCount === 0)
        throw new RejectedOrder(`account ${order.account} is missing or short of funds`);
      return true;
    },
    { deadline },
  );
}

export const handler = async (event: SQSEvent, context: Context): Promise<SQSBatchResponse> => {
  const batchItemFailures: SQSBatchResponse['batchItemFailures'] = [];
  for (const record of event.Records) {
    // Leave a second for the response; OCC retries do not start attempts that cannot finish in time.
    const deadline = Date.now() + context.getRemainingTimeInMillis() - 1_000;
    try {
      await applyOrder(parseOrder(record), deadline);
    } catch (err) {
      console.warn(`record ${record.messageId} failed: ${(err as Error).name}: ${(err as Error).message}`);
      batchItemFailures.push({ itemIdentifier: record.messageId });
    }
  }
  return { batchItemFailures };
};
