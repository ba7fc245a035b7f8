// A service that imports an interface wasaga does not provide (`acme:lookup/dns`, from
// the world `needy` the test adds beside `plugin`), for tests/e2e/polyglot.rs: loading
// it must fail, and the message must name that import.
import { resolve } from 'acme:lookup/dns';
import { Service } from './wasaga.js';

const app = new Service('needy');
app.operation('lookup', 'resolves a name', ({ name }) => ({ address: resolve(name) }));
export const service = app.component();
