// wasaga's JavaScript SDK: a service's operations declared once, over the raw
// `wasaga:plugin` world (the imports componentize-js links from `wit/`).
//
//   import { Service, Rejected, records } from './wasaga.js';
//   const app = new Service('greeter');
//   app.operation('greet', 'Greets someone', (input, call) => ({ greeting: `Hello, ${input.name}!` }));
//   export const service = app.component();   // what the component exports
//
// Inputs, outputs, records and event payloads are JSON (the convention of the wasaga
// API). A handler returns the output, or throws `Rejected` (a business refusal: final,
// stored and replayed, compensated in a saga) or `Transient` (a temporary problem:
// nothing kept, retried). Any other exception traps the call: the host reports it and
// keeps nothing of it.

import * as store from 'wasaga:plugin/store@0.3.0';
import * as events from 'wasaga:plugin/events@0.3.0';
import * as hostLog from 'wasaga:plugin/log@0.3.0';

/** A business refusal (out of stock, card declined): final, and a saga compensates. */
export class Rejected extends Error {}

/** A temporary problem (a dependency is down): nothing is kept, the host retries. */
export class Transient extends Error {}

/**
 * A compare-and-set (`records.put`, `records.delete` with `expected`) that did not hold.
 * Uncaught, it is a transient failure: the caller (or the saga) tries again.
 */
export class Conflict extends Transient {
  constructor(key, expected, actual) {
    super(`record \`${key}\` is at version ${actual}, not ${expected}`);
    Object.assign(this, { key, expected, actual });
  }
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const encode = (value) => encoder.encode(JSON.stringify(value));
const decode = (bytes) => JSON.parse(decoder.decode(bytes));

function storeCall(fn, ...args) {
  try {
    return fn(...args);
  } catch (e) {
    const error = e.payload ?? e;
    if (error?.tag === 'conflict') {
      const { key, expected, actual } = error.val;
      throw new Conflict(key, expected, actual);
    }
    if (error?.tag === 'invalid') throw new Rejected(error.val);
    throw e;
  }
}

const record = (entry) => ({ value: decode(entry.value), version: Number(entry.version) });

/** This service's versioned records (see `wit/store.wit`); versions are numbers. */
export const records = {
  /** `{ value, version }`, or `undefined` when absent. */
  get: (key) => {
    const entry = store.get(key);
    return entry === undefined ? undefined : record(entry);
  },
  /** Writes `value`, based on what this call read; returns the version it will have. */
  set: (key, value) => Number(storeCall(store.set, key, encode(value))),
  /** Compare-and-set: `expected === undefined` creates only if absent. */
  put: (key, value, expected) =>
    Number(storeCall(store.put, key, encode(value), expected === undefined ? undefined : BigInt(expected))),
  delete: (key, expected) => storeCall(store['delete'], key, expected === undefined ? undefined : BigInt(expected)),
  /** `[key, { value, version }]` pairs in key order; page on with `startAfter`. */
  scan: (prefix, startAfter, limit = 100) =>
    store.scan(prefix, startAfter, limit).map(([key, entry]) => [key, record(entry)]),
};

/** Publishes an event, kept if and only if this call succeeds. */
export const publish = (topic, payload, chain) => events.publish(topic, encode(payload), chain);

/** Messages into the host's log, tagged with the service and the call. */
export const log = Object.fromEntries(
  ['debug', 'info', 'warn', 'error'].map((level) => [level, (message) => hostLog.log(level, String(message))]),
);

/** A service's operations, subscriptions and HTTP destinations. */
export class Service {
  #operations = new Map();
  #infos = [];
  #subscriptions = [];
  #destinations = [];

  constructor(name) {
    this.name = name;
  }

  /**
   * Declares `handler(input, call)` as operation `name`. Options: `compensatedBy`, and
   * `internal` (true: only sagas, deliveries and operators may call it; unset: the host decides).
   */
  operation(name, description, handler, { compensatedBy, internal } = {}) {
    this.#operations.set(name, handler);
    const visibility = internal === undefined ? undefined : internal ? 'internal' : 'public';
    this.#infos.push({ name, compensatedBy, description, visibility });
    return this;
  }

  /** Delivers each event published on `topic` to `operation`. */
  subscribe(topic, operation) {
    this.#subscriptions.push([topic, operation]);
    return this;
  }

  /**
   * Declares an HTTP destination the service calls with `fetch`: `scheme://host[:port]/prefix`
   * (`:*` for a port the operator chooses) and its methods (none: all). The operator grants it too.
   */
  destination(url, methods = []) {
    this.#destinations.push({ url, methods });
    return this;
  }

  /** What the component exports as `wasaga:plugin/service`. */
  component() {
    return {
      describe: () => ({
        name: this.name,
        operations: this.#infos,
        subscriptions: this.#subscriptions,
        destinations: this.#destinations,
      }),
      handle: (call) => {
        const handler = this.#operations.get(call.operation);
        if (!handler) throw { tag: 'rejected', val: `no operation \`${call.operation}\`` };
        let input;
        try {
          input = call.input.length ? decode(call.input) : undefined;
        } catch (e) {
          throw { tag: 'rejected', val: `invalid input: ${e.message}` };
        }
        const failure = (e) => {
          if (e instanceof Transient) return { tag: 'transient', val: e.message };
          if (e instanceof Rejected) return { tag: 'rejected', val: e.message };
          return e;
        };
        let output;
        try {
          output = handler(input, call);
        } catch (e) {
          throw failure(e);
        }
        // An async handler (one that awaits `fetch`): componentize-js runs the event
        // loop until the promise it returns settles.
        if (output instanceof Promise) {
          return output.then(encode, (e) => {
            throw failure(e);
          });
        }
        return encode(output);
      },
    };
  }
}
