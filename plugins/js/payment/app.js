// `payment` in JavaScript: the Rust service's port (plugins/payment), on wasaga's
// JavaScript SDK (host/templates/js/wasaga.js), with the same records, operations,
// answers and failure injection, so that the demo's sagas and their invariants hold
// with either. See plugins/payment/src/lib.rs for what each operation does.

import { Rejected, Service, Transient, publish, records } from './wasaga.js';

function flaky(attempt, planned = 0) {
  if (attempt <= planned) {
    throw new Transient(`card processor unavailable (attempt ${attempt} of ${planned} planned failures)`);
  }
}

const accountKey = (customer) => `account/${customer}`;

function openAccount({ customer, balance }) {
  if (balance < 0) throw new Rejected('an opening balance cannot be negative');
  const key = accountKey(customer);
  if (records.get(key)) throw new Rejected(`customer \`${customer}\` already has an account`);
  records.set(key, { balance });
  return { balance, customer };
}

function charge({ customer, amount, order }) {
  const chargeKey = `charge/${order}`;
  const existing = records.get(chargeKey);
  if (existing) {
    if (existing.value.refunded) throw new Rejected(`order \`${order}\` was already refunded`);
    return { charged: existing.value.amount, order };
  }
  if (!(amount > 0)) throw new Rejected('the amount must be positive');
  const key = accountKey(customer);
  const account = records.get(key);
  if (!account) throw new Rejected(`declined: customer \`${customer}\` has no account`);
  if (account.value.balance < amount) throw new Rejected('declined: insufficient funds');
  records.set(key, { balance: account.value.balance - amount });
  records.set(chargeKey, { customer, amount, refunded: false });
  return { charged: amount, order };
}

function refund({ order }) {
  const chargeKey = `charge/${order}`;
  const held = records.get(chargeKey);
  if (!held || held.value.refunded) return { order, refunded: 0 };
  const { customer, amount } = held.value;
  const key = accountKey(customer);
  const balance = records.get(key)?.value.balance ?? 0;
  records.set(key, { balance: balance + amount });
  records.set(chargeKey, { customer, amount, refunded: true });
  return { order, refunded: amount };
}

const app = new Service('payment')
  .operation('open-account', 'Opens a customer account with a balance.', (input) => openAccount(input), {
    internal: true,
  })
  .operation(
    'charge',
    'Charges a customer for an order.',
    (input, call) => {
      flaky(call.attempt, input.payment_transient_failures);
      return charge(input);
    },
    { compensatedBy: 'refund', internal: true },
  )
  .operation('refund', "Refunds an order's charge.", (input, call) => {
    flaky(call.attempt, input.refund_transient_failures);
    return refund(input);
  })
  // The choreographed order flow: the event's payload is the order; the answer is the
  // next event, with the same payload.
  .operation('charge-placed', 'On stock-reserved: charges, says if it could.', (order, call) => {
    flaky(call.attempt, order.payment_transient_failures);
    try {
      const output = charge(order);
      publish('payment-completed', order);
      return output;
    } catch (e) {
      if (!(e instanceof Rejected)) throw e;
      const declined = { ...order, reason: e.message };
      publish('payment-declined', declined);
      return declined;
    }
  })
  .subscribe('stock-reserved', 'charge-placed');

export const service = app.component();
