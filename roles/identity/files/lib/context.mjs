// What every part of a request may need without it being passed along: the client's address (rate limits,
// events) and the koa context (the storage adapter records device approvals and logouts in the transaction of
// the change, and learns there which route made it). Also the one logger.

import { AsyncLocalStorage } from 'node:async_hooks';

export const requestContext = new AsyncLocalStorage();

export function currentRequest() {
  return requestContext.getStore();
}

// One line per request and per notable event. Callers pass names and outcomes, never a password, code, token,
// cookie or secret; values are flattened to one line.
export function log(event, fields = {}) {
  const parts = [event];
  for (const [key, value] of Object.entries(fields)) {
    if (value === undefined) continue;
    parts.push(`${key}=${String(value).replace(/[\s"]+/g, '_').slice(0, 200)}`);
  }
  process.stdout.write(`${new Date().toISOString()} identity ${parts.join(' ')}\n`);
}
