// Builds {{name}}.wasm from app.js against the wasaga:plugin world in wit/, with
// componentize-js's default features: `fetch` goes through wasi:http, which wasaga
// sends to the destinations the manifest declares and the operator grants.
import { componentize } from '@bytecodealliance/componentize-js';
import { writeFile } from 'node:fs/promises';

const { component } = await componentize({
  sourcePath: 'app.js',
  witPath: 'wit',
  worldName: 'plugin',
});
await writeFile('{{name}}.wasm', component);
console.log('built {{name}}.wasm');
