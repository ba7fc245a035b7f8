// Builds {{name}}.wasm from app.js against the wasaga:plugin world in wit/.
//
// The features left out are the ones whose imports (wasi:http, stdio, random, clocks)
// wasaga does not provide: a plugin has no network, no files and no clock but the
// host's (see wit/world.wit).
import { componentize } from '@bytecodealliance/componentize-js';
import { writeFile } from 'node:fs/promises';

const { component } = await componentize({
  sourcePath: 'app.js',
  witPath: 'wit',
  worldName: 'plugin',
  disableFeatures: ['http', 'fetch-event', 'stdio', 'random', 'clocks'],
});
await writeFile('{{name}}.wasm', component);
console.log('built {{name}}.wasm');
