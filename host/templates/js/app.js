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

// What the component exports as `wasaga:plugin/service`.
export const service = app.component();
