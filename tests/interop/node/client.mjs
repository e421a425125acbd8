// Node.js interop client for Smart Dispatch: loads proto/ at run time with @grpc/proto-loader
// (no generated code) and checks health, Decide, a bad request, Dispatch and Timestamp/Struct
// round trips against a running sidecar.
//
//   node client.mjs 127.0.0.1:50051
//
// Prints one line per check and a final `node interop: N passed, M failed`; exits 1 when any
// check failed, 2 on bad usage. tests/interop/test_node_client.py runs it against a fresh sidecar.

import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO_PROTO = path.resolve(HERE, '..', '..', '..', 'proto');
const VENDORED_PROTO = path.join(HERE, 'protos');
const RPC_DEADLINE_MS = 5000;
const DELIVERY_TIMEOUT_MS = 15000;
const SERVICE_NAME = 'smartdispatch.v1.SmartDispatchService';

const address = process.argv[2];
if (!address || process.argv.length !== 3) {
  console.error('usage: node client.mjs HOST:PORT');
  process.exit(2);
}

// keepCase: field names exactly as in the .proto (snake_case), like every other client.
// longs: String keeps int64 (Timestamp.seconds, counters) exact; enums: String gives names.
// google/protobuf/*.proto imports resolve to the well-known types bundled with protobufjs.
const LOADER_OPTIONS = {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs: [REPO_PROTO, VENDORED_PROTO],
};
const definition = protoLoader.loadSync(
  ['smartdispatch/v1/smart_dispatch.proto', 'grpc/health/v1/health.proto'],
  LOADER_OPTIONS,
);
const loaded = grpc.loadPackageDefinition(definition);
const v1 = loaded.smartdispatch.v1;

// No proxy: the sidecar is on loopback, whatever http_proxy the CI machine sets.
const CHANNEL_OPTIONS = { 'grpc.enable_http_proxy': 0 };
const credentials = grpc.credentials.createInsecure();
const clients = {
  health: new loaded.grpc.health.v1.Health(address, credentials, CHANNEL_OPTIONS),
  dispatch: new v1.SmartDispatchService(address, credentials, CHANNEL_OPTIONS),
  admin: new v1.RulesAdminService(address, credentials, CHANNEL_OPTIONS),
};

/** A unary call as a promise, with a deadline. */
function call(client, method, request) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + RPC_DEADLINE_MS);
    client[method](request, { deadline }, (err, response) => (err ? reject(err) : resolve(response)));
  });
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const uid = (prefix) => `${prefix}-${randomUUID()}`;

// --- google.protobuf.Timestamp ------------------------------------------------------------
function toTimestamp(date) {
  const ms = date.getTime();
  return { seconds: String(Math.floor(ms / 1000)), nanos: (((ms % 1000) + 1000) % 1000) * 1e6 };
}

function fromTimestamp(ts) {
  assert.ok(ts, 'timestamp is set');
  return new Date(Number(ts.seconds) * 1000 + Math.floor(ts.nanos / 1e6));
}

// --- google.protobuf.Struct / Value -------------------------------------------------------
// protobufjs resolves google/protobuf/*.proto to its BUNDLED well-known types, which are
// declared with camelCase field names: `keepCase` does not reach them. So a Value is
// {stringValue: ...}, not {string_value: ...}; a snake_case key is silently dropped on encode
// (the server would see an empty Struct). The round-trip check below catches exactly that.
function toValue(v) {
  if (v === null) return { nullValue: 'NULL_VALUE' };
  if (typeof v === 'number') return { numberValue: v };
  if (typeof v === 'string') return { stringValue: v };
  if (typeof v === 'boolean') return { boolValue: v };
  if (Array.isArray(v)) return { listValue: { values: v.map(toValue) } };
  return { structValue: toStruct(v) };
}

function toStruct(obj) {
  return { fields: Object.fromEntries(Object.entries(obj).map(([k, v]) => [k, toValue(v)])) };
}

function fromValue(value) {
  switch (value.kind) {
    case 'nullValue':
      return null;
    case 'numberValue':
    case 'stringValue':
    case 'boolValue':
      return value[value.kind];
    case 'listValue':
      return (value.listValue.values ?? []).map(fromValue);
    case 'structValue':
      return fromStruct(value.structValue);
    default:
      throw new Error(`google.protobuf.Value without a kind: ${JSON.stringify(value)}`);
  }
}

function fromStruct(struct) {
  assert.ok(struct, 'struct is set');
  return Object.fromEntries(Object.entries(struct.fields ?? {}).map(([k, v]) => [k, fromValue(v)]));
}

/** An `Etc/GMT±N` zone whose local hour is `hour` now (clear of marketing quiet hours). */
function zoneWithLocalHour(hour) {
  let offset = (((hour - new Date().getUTCHours()) % 24) + 24) % 24;
  if (offset > 14) offset -= 24;
  if (offset === 0) return 'Etc/GMT';
  return `Etc/GMT${offset > 0 ? '-' : '+'}${Math.abs(offset)}`; // POSIX sign: Etc/GMT-9 is UTC+9
}

function otpRequest(messageId, userId) {
  return {
    message: { id: messageId, category: 'otp', template: 'login_code', data: toStruct({ code: '428913' }) },
    recipient: {
      user_id: userId,
      timezone: 'UTC',
      addresses: { sms: '+15550100', email: 'ada@example.com' },
    },
  };
}

// --- the checks ---------------------------------------------------------------------------
const checks = [];
const check = (name, fn) => checks.push({ name, fn });

check('grpc.health.v1 Check is SERVING (server and service)', async () => {
  for (const service of ['', SERVICE_NAME]) {
    const response = await call(clients.health, 'Check', { service });
    assert.equal(response.status, 'SERVING', `health of ${JSON.stringify(service)}`);
  }
  await assert.rejects(call(clients.health, 'Check', { service: 'no.such.Service' }), (err) => {
    assert.equal(err.code, grpc.status.NOT_FOUND);
    return true;
  });
});

check('Decide: an otp message is sent now by sms', async () => {
  const messageId = uid('otp');
  const before = Date.now();
  const response = await call(clients.dispatch, 'Decide', otpRequest(messageId, uid('user')));

  assert.equal(response.verdict, 'VERDICT_SEND');
  assert.ok(response.decision_id.length > 0, 'decision_id is set');
  assert.ok(response.steps.length >= 1, 'at least one plan step');
  assert.equal(response.steps[0].channel, 'sms');
  assert.equal(response.steps[0].address, '+15550100');
  assert.ok(response.matched_rules.includes('otp_sms_now'), `matched ${response.matched_rules}`);
  const sendAt = fromTimestamp(response.send_at).getTime();
  assert.ok(Math.abs(sendAt - before) < 60_000, `send_at ${response.send_at.seconds} is now`);

  const { status } = await call(clients.admin, 'GetRulesStatus', {});
  assert.match(response.ruleset_version, /^[0-9a-f]+$/);
  assert.equal(response.ruleset_version, status.version, 'decision names the serving ruleset');
  assert.ok(status.rule_count > 0, 'rules are loaded');
});

check('Decide: a request without message.id is INVALID_ARGUMENT naming the field', async () => {
  const request = otpRequest('', uid('user'));
  await assert.rejects(call(clients.dispatch, 'Decide', request), (err) => {
    assert.equal(err.code, grpc.status.INVALID_ARGUMENT, `code ${err.code}: ${err.details}`);
    assert.match(err.details, /^message\.id: /);
    assert.match(err.details, /required/);
    return true;
  });
});

check('Dispatch: accepted, then DELIVERED by the stub sms provider; duplicates collapse', async () => {
  const messageId = uid('dispatch');
  const request = otpRequest(messageId, uid('user'));
  const accepted = await call(clients.dispatch, 'Dispatch', request);

  assert.ok(accepted.dispatch_id.length > 0, 'dispatch_id is set');
  assert.equal(accepted.duplicate, false);
  assert.equal(accepted.decision.verdict, 'VERDICT_SEND');
  assert.equal(accepted.status.message_id, messageId);

  const deadline = Date.now() + DELIVERY_TIMEOUT_MS;
  let status;
  for (;;) {
    ({ status } = await call(clients.dispatch, 'GetDispatch', { dispatch_id: accepted.dispatch_id }));
    if (status.state === 'DISPATCH_STATE_DELIVERED') break;
    assert.ok(
      !['DISPATCH_STATE_FAILED', 'DISPATCH_STATE_CANCELLED', 'DISPATCH_STATE_EXPIRED'].includes(status.state),
      `dispatch ended ${status.state}`,
    );
    assert.ok(Date.now() < deadline, `not delivered within ${DELIVERY_TIMEOUT_MS} ms (${status.state})`);
    await sleep(100);
  }
  assert.equal(status.dispatch_id, accepted.dispatch_id);
  assert.equal(status.dead_lettered, false);
  const delivered = status.attempts.filter((a) => a.outcome === 'delivered');
  assert.equal(delivered.length, 1, 'exactly one delivered attempt');
  assert.equal(delivered[0].channel, 'sms');
  assert.ok(delivered[0].idempotency_key.length > 0, 'attempt has an idempotency key');
  assert.equal(status.history.at(-1).state, 'DISPATCH_STATE_DELIVERED');

  const again = await call(clients.dispatch, 'Dispatch', request);
  assert.equal(again.duplicate, true, 'same message id is a duplicate');
  assert.equal(again.dispatch_id, accepted.dispatch_id);
  const byMessage = await call(clients.dispatch, 'GetDispatch', { message_id: messageId });
  assert.equal(byMessage.status.dispatch_id, accepted.dispatch_id);
  assert.equal(byMessage.status.attempts.filter((a) => a.outcome === 'delivered').length, 1);
});

check('Timestamp/Struct round trip: attributes.last_active_at, not_after, explanation facts', async () => {
  const now = Date.now();
  const daysAgo = (days) => new Date(now - days * 86_400_000).toISOString();
  const marketing = (attributes, notAfter) => ({
    message: {
      id: uid('promo'),
      category: 'marketing',
      labels: { campaign: 'spring' },
      not_after: toTimestamp(notAfter),
    },
    recipient: {
      user_id: uid('user'),
      timezone: zoneWithLocalHour(12),
      addresses: { sms: '+15550100', email: 'ada@example.com', in_app: 'inbox-ada' },
      attributes: toStruct(attributes),
    },
    dry_run: true,
    explain: true,
  });

  // Active a day ago (a Struct string the server parses as RFC 3339) -> the in-app rule.
  const notAfter = new Date(now + 3_600_000);
  const active = await call(
    clients.dispatch,
    'Decide',
    marketing({ last_active_at: daysAgo(1), vip: true, score: 42.5, segment: 'beta' }, notAfter),
  );
  assert.equal(active.verdict, 'VERDICT_SEND');
  assert.equal(active.steps[0].channel, 'in_app');
  assert.ok(active.matched_rules.includes('marketing_active_in_app'), `matched ${active.matched_rules}`);
  const sendAt = fromTimestamp(active.send_at);
  assert.ok(sendAt.getTime() <= notAfter.getTime(), 'send_at is before not_after');
  assert.ok(Math.abs(sendAt.getTime() - now) < 60_000, 'send_at is now');
  assert.equal(fromTimestamp(active.steps[0].send_at).getTime(), sendAt.getTime());

  const facts = fromStruct(active.explanation.facts);
  assert.ok(Math.abs(facts.user.days_since_active - 1) < 0.01, `days ${facts.user.days_since_active}`);
  assert.equal(facts.user.vip, true);
  assert.equal(facts.user.score, 42.5);
  assert.equal(facts.user.segment, 'beta');
  assert.equal(facts.message.has_deadline, true);
  assert.deepEqual(facts.labels, { campaign: 'spring' });
  assert.equal(facts.reachable.in_app, true);
  assert.equal(facts.reachable.wechat, false);
  for (const cap of active.caps) {
    assert.equal(cap.used, '0', `dry run consumed nothing (${cap.name})`);
  }
  assert.deepEqual(active.caps.map((c) => c.name).sort(), ['marketing_daily', 'marketing_hourly']);
  assert.deepEqual(
    active.caps.map((c) => c.window.seconds).sort(),
    ['3600', '86400'],
    'cap windows come back as google.protobuf.Duration',
  );

  // Inactive for ten days -> the sms rule; a deadline already passed -> suppressed as expired.
  const expired = await call(
    clients.dispatch,
    'Decide',
    marketing({ last_active_at: daysAgo(10) }, new Date(now - 60_000)),
  );
  assert.equal(expired.verdict, 'VERDICT_SUPPRESS');
  assert.ok(expired.matched_rules.includes('marketing_inactive_sms'), `matched ${expired.matched_rules}`);
  assert.ok(
    expired.reasons.some((r) => r.code === 'expired'),
    `reasons ${JSON.stringify(expired.reasons)}`,
  );
  assert.equal(expired.send_at, null, 'no send_at for SUPPRESS');
  const expiredFacts = fromStruct(expired.explanation.facts);
  assert.ok(Math.abs(expiredFacts.user.days_since_active - 10) < 0.01);
});

// --- runner -------------------------------------------------------------------------------
let passed = 0;
let failed = 0;
for (const { name, fn } of checks) {
  try {
    await fn();
    passed += 1;
    console.log(`ok - ${name}`);
  } catch (err) {
    failed += 1;
    console.log(`not ok - ${name}`);
    console.log(String(err?.stack ?? err).replace(/^/gm, '    '));
  }
}
for (const client of Object.values(clients)) client.close();
console.log(`node interop: ${passed} passed, ${failed} failed`);
process.exitCode = failed === 0 && passed === checks.length ? 0 : 1;
