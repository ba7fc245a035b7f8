// Every part of wasaga's JavaScript SDK in one operation, for tests/e2e/polyglot.rs:
// versioned writes, a delete, a compare-and-set that fails, a scan, an event, a log;
// and `fetch`.
import { Conflict, Service, publish, records, log } from './wasaga.js';
const app = new Service('sdk-check');
app.operation('all', 'exercises the SDK', (input) => {
  const v1 = records.put('a', { n: 1 }, undefined);
  const v2 = records.set('b', 2);
  records.delete('c');
  let conflict = null;
  try { records.put('a', { n: 9 }, 7); } catch (e) { conflict = e instanceof Conflict ? e.message : String(e); }
  const listed = records.scan('', undefined, 10).map(([k, r]) => `${k}@${r.version}`);
  publish('t', { x: 1 }, 'chain-1');
  log.info('hello');
  return { v1, v2, conflict, listed, got: records.get('x') ?? null };
});
// `fetch` through the host's wasi:http (tests/e2e/outbound.rs serves this with a grant).
app.operation('fetch', 'fetches a URL', async ({ url }) => {
  const response = await fetch(url, { method: 'POST', body: 'from js' });
  return { status: response.status, body: await response.text() };
});
app.destination('http://127.0.0.1:*/');
export const service = app.component();
