// The `{{name}}` service. Build it with `npm run build`; see README.md.

import { Rejected, Service, records } from './wasaga.js';

const app = new Service('{{name}}');

app.operation('greet', 'Greets someone, and counts how often', (input) => {
  const name = input?.name;
  if (!name) throw new Rejected('say who to greet: {"name": ...}');
  const greeted = records.get(`greeted/${name}`);
  const count = (greeted?.value ?? 0) + 1;
  records.set(`greeted/${name}`, count);
  return { greeting: `Hello, ${name}!`, count };
});

// Calling another system over HTTP: declare where, and the operator grants it too
// (`wasaga serve --outbound`, see wasaga's docs/outbound.md). The host adds an
// idempotency key that stays the same when the call runs again, and fills in secrets:
//
//   app.destination('https://api.example.com/v1/', ['POST']);
//   app.operation('charge', 'Charges a card', async (input) => {
//     const response = await fetch('https://api.example.com/v1/charges', {
//       method: 'POST',
//       headers: { authorization: 'Bearer {{secret.api-key}}', 'content-type': 'application/json' },
//       body: JSON.stringify(input),
//     });
//     if (!response.ok) throw new Rejected(`declined: ${response.status}`);
//     return await response.json();
//   });

// What the component exports as `wasaga:plugin/service`.
export const service = app.component();
