// A device client built only from the official AWS IoT Device SDK v2 for
// JavaScript (aws-iot-device-sdk-v2, pinned in package-lock.json), run by
// cloud/compat/jsclient_test.go against bootcert-lab.
//
// Usage: node client.js CONFIG.json
//   {"host","port","caFile","certFile","keyFile","thingName","jobId"}
//
// It prints one JSON object on stdout (results of every step, the SDK's
// own parse/shape errors included); diagnostics go to stderr. It exits 0
// when it ran to the end, whatever the lab answered: the Go test decides.
'use strict';

const fs = require('fs');
const { mqtt, iot, iotjobs } = require('aws-iot-device-sdk-v2');

const cfg = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const out = { sdkVersion: require('aws-iot-device-sdk-v2/package.json').version, steps: {}, shapeErrors: [], rejections: {}, notifyNext: [] };
const log = (...a) => console.error('[jsclient]', ...a);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------- shapes
// The SDK's model (dist/iotjobs/model.d.ts) types; times are epoch seconds
// on the wire (the SDK's JSON.parse keeps them numbers).
const statuses = new Set(Object.values(iotjobs.model.JobStatus).filter((s) => s !== 'UNKNOWN_ENUM_VALUE'));
const codes = new Set(Object.values(iotjobs.model.RejectedErrorCode).filter((s) => s !== 'UNKNOWN_ENUM_VALUE'));

function shape(where, ok, what) {
  if (!ok) out.shapeErrors.push(where + ': ' + what);
}
function isNum(v) { return typeof v === 'number' && Number.isFinite(v); }
function checkStringMap(where, m) {
  if (m === undefined) return;
  shape(where, m !== null && typeof m === 'object' && !Array.isArray(m), 'statusDetails is not an object');
  for (const [k, v] of Object.entries(m || {})) shape(where, typeof v === 'string', `statusDetails.${k} is not a string`);
}
function checkExecutionData(where, e) {
  shape(where, e && typeof e === 'object', 'execution is not an object');
  if (!e) return;
  shape(where, typeof e.jobId === 'string' && e.jobId.length > 0, 'jobId missing');
  shape(where, typeof e.thingName === 'string', 'thingName missing');
  shape(where, statuses.has(e.status), `status ${JSON.stringify(e.status)} is not a JobStatus`);
  for (const f of ['queuedAt', 'lastUpdatedAt', 'versionNumber', 'executionNumber']) shape(where, isNum(e[f]), `${f} is not a number`);
  if (e.startedAt !== undefined) shape(where, isNum(e.startedAt), 'startedAt is not a number');
  if (e.jobDocument !== undefined) shape(where, e.jobDocument !== null && typeof e.jobDocument === 'object', 'jobDocument is not an object');
  checkStringMap(where, e.statusDetails);
}
function checkSummary(where, s) {
  shape(where, typeof s.jobId === 'string', 'jobId missing');
  for (const f of ['queuedAt', 'lastUpdatedAt', 'versionNumber', 'executionNumber']) shape(where, isNum(s[f]), `${f} is not a number`);
  if (s.startedAt !== undefined) shape(where, isNum(s.startedAt), 'startedAt is not a number');
}
function checkState(where, st) {
  if (st === undefined) return;
  shape(where, statuses.has(st.status), `executionState.status ${JSON.stringify(st.status)} is not a JobStatus`);
  shape(where, isNum(st.versionNumber), 'executionState.versionNumber is not a number');
  checkStringMap(where, st.statusDetails);
}
function checkRejection(where, r) {
  shape(where, codes.has(r.code), `code ${JSON.stringify(r.code)} is not a RejectedErrorCode`);
  shape(where, typeof r.message === 'string', 'message is not a string');
  shape(where, isNum(r.timestamp), 'timestamp is not a number');
  checkState(where, r.executionState);
}

// ---------------------------------------------------------------- connection
function connection(clientBootstrap) {
  const b = iot.AwsIotMqttConnectionConfigBuilder.new_mtls_builder_from_path(cfg.certFile, cfg.keyFile);
  b.with_certificate_authority_from_path(undefined, cfg.caFile);
  b.with_endpoint(cfg.host);
  b.with_port(cfg.port);
  b.with_client_id(cfg.thingName);
  b.with_clean_session(true);
  b.with_keep_alive_seconds(30);
  b.with_ping_timeout_ms(5000);
  b.with_timeout_ms(5000);
  const client = new mqtt.MqttClient(clientBootstrap);
  return client.new_connection(b.build());
}

async function connectOnce(bootstrap) {
  const c = connection(bootstrap);
  c.on('error', (e) => log('connection error event:', String(e)));
  try {
    await c.connect();
    return { conn: c };
  } catch (e) {
    try { await c.disconnect(); } catch (_) { /* not connected */ }
    return { error: String(e && (e.error_name || e.message) || e) };
  }
}

// ---------------------------------------------------------------- steps
async function step(name, fn) {
  try {
    const v = await fn();
    out.steps[name] = { ok: true, value: v };
    return v;
  } catch (e) {
    const err = { ok: false, error: String(e && e.message || e) };
    if (e && e.modeledError) err.modeledError = e.modeledError;
    out.steps[name] = err;
    log(name, 'failed:', err.error);
    return undefined;
  }
}

// reject runs a v2 request the lab must reject and records the modeled error.
async function reject(name, fn) {
  try {
    const v = await fn();
    out.rejections[name] = { accepted: v };
  } catch (e) {
    if (e && e.modeledError) {
      checkRejection('rejection ' + name, e.modeledError);
      out.rejections[name] = e.modeledError;
    } else {
      out.rejections[name] = { clientError: String(e && e.message || e) };
    }
  }
}

// rawReject publishes a payload the SDK's typed clients would never send and
// waits for the rejection on topic + "/rejected" through the v1 jobs
// client's parser (IotJobsClient.subscribeTo...Rejected) or a raw
// subscription for topics the SDK has no API for.
async function rawReject(conn, name, topic, payload, subscribe) {
  let got;
  const handler = (err, resp) => { got = err ? { clientError: String(err.message || err) } : resp; };
  await subscribe(handler);
  await conn.publish(topic, payload, mqtt.QoS.AtLeastOnce);
  for (let i = 0; i < 100 && got === undefined; i++) await sleep(50);
  if (got === undefined) got = { clientError: 'no rejection within 5s on ' + topic + '/rejected' };
  else if (!got.clientError) checkRejection('rejection ' + name, got);
  out.rejections[name] = got;
}

async function main() {
  const bootstrap = new (require('aws-crt').io.ClientBootstrap)();

  // JITR: the first connection with an unregistered certificate is closed
  // by AWS IoT (the certificate is auto-registered PENDING_ACTIVATION); once
  // the activator activated it, the device connects.
  const first = await connectOnce(bootstrap);
  if (first.conn) {
    out.jitr = { firstConnect: 'accepted' };
    await first.conn.disconnect();
    return;
  }
  out.jitr = { firstConnect: 'refused', firstError: first.error, attempts: 1 };
  let conn;
  for (let i = 0; i < 60 && !conn; i++) {
    await sleep(250);
    const r = await connectOnce(bootstrap);
    out.jitr.attempts++;
    if (r.conn) conn = r.conn;
    else out.jitr.lastError = r.error;
  }
  if (!conn) {
    out.jitr.connected = false;
    return;
  }
  out.jitr.connected = true;

  const thingName = cfg.thingName;
  const jobs = iotjobs.IotJobsClientv2.newFromMqtt311(conn, {
    maxRequestResponseSubscriptions: 6, maxStreamingSubscriptions: 2, operationTimeoutInSeconds: 10,
  });

  // notify-next, through the SDK's streaming operation.
  const stream = jobs.createNextJobExecutionChangedStream({ thingName });
  let subscribed = false;
  stream.on('subscriptionStatus', (ev) => { if (ev.type === 0 /* SubscriptionEstablished */) subscribed = true; else log('notify-next subscription', JSON.stringify(ev)); });
  stream.on('incomingPublish', (ev) => {
    const m = ev.message;
    shape('notify-next', isNum(m.timestamp), 'timestamp is not a number');
    if (m.execution !== undefined) checkExecutionData('notify-next', m.execution);
    out.notifyNext.push(m);
  });
  stream.on('incomingPublishError', (ev) => out.shapeErrors.push('notify-next: the SDK could not parse ' + JSON.stringify(ev)));
  stream.open();
  for (let i = 0; i < 100 && !subscribed; i++) await sleep(50);
  out.notifySubscribed = subscribed;

  // GetPendingJobExecutions: the rotation job's execution is queued when
  // the activator added the thing to the rotation group.
  let pending;
  for (let i = 0; i < 40; i++) {
    pending = await step('getPending', () => jobs.getPendingJobExecutions({ thingName }));
    if (pending && pending.queuedJobs && pending.queuedJobs.length > 0) break;
    await sleep(250);
  }
  if (pending) {
    shape('getPending', Array.isArray(pending.inProgressJobs) && Array.isArray(pending.queuedJobs), 'inProgressJobs/queuedJobs are not arrays');
    shape('getPending', isNum(pending.timestamp), 'timestamp is not a number');
    for (const s of [...(pending.inProgressJobs || []), ...(pending.queuedJobs || [])]) checkSummary('getPending', s);
  }

  const next = await step('describeNext', () => jobs.describeJobExecution({ thingName, jobId: '$next', includeJobDocument: true }));
  if (next) checkExecutionData('describeNext', next.execution);

  const started = await step('startNext', () => jobs.startNextPendingJobExecution({ thingName, statusDetails: { step: 'started-by-js-sdk' } }));
  if (started) checkExecutionData('startNext', started.execution);
  const jobId = (started && started.execution && started.execution.jobId) || cfg.jobId;
  const v1 = started && started.execution ? started.execution.versionNumber : 1;

  const described = await step('describe', () => jobs.describeJobExecution({ thingName, jobId, includeJobDocument: true, executionNumber: started && started.execution ? started.execution.executionNumber : undefined }));
  if (described) checkExecutionData('describe', described.execution);

  const updated = await step('updateInProgress', () => jobs.updateJobExecution({
    thingName, jobId, status: iotjobs.model.JobStatus.IN_PROGRESS, statusDetails: { step: 'working' },
    expectedVersion: v1, includeJobExecutionState: true, includeJobDocument: true,
  }));
  if (updated) {
    checkState('updateInProgress', updated.executionState);
    shape('updateInProgress', isNum(updated.timestamp), 'timestamp is not a number');
  }

  // Rejections a device can cause through the typed client.
  await reject('VersionMismatch', () => jobs.updateJobExecution({ thingName, jobId, status: 'IN_PROGRESS', expectedVersion: v1, includeJobExecutionState: true }));
  await reject('InvalidRequest', () => jobs.updateJobExecution({ thingName, jobId, status: 'QUEUED' }));
  await reject('ResourceNotFound', () => jobs.describeJobExecution({ thingName, jobId: 'no-such-job' }));

  const before = out.notifyNext.length;
  const done = await step('updateTerminal', () => jobs.updateJobExecution({
    thingName, jobId, status: iotjobs.model.JobStatus.FAILED, statusDetails: { reason: 'compat test' }, includeJobExecutionState: true,
  }));
  if (done) checkState('updateTerminal', done.executionState);
  for (let i = 0; i < 100 && out.notifyNext.length === before; i++) await sleep(50);
  out.notifyNextAfterTerminal = out.notifyNext.length > before;

  await reject('InvalidStateTransition', () => jobs.updateJobExecution({ thingName, jobId, status: 'IN_PROGRESS', includeJobExecutionState: true }));
  // AWS's model documents TerminalStateReached for "a command to describe a
  // job ... in a terminal state"; record what the lab answers.
  await reject('DescribeTerminal', () => jobs.describeJobExecution({ thingName, jobId }));

  stream.close();
  jobs.close();

  // Requests the typed client cannot send: the v1 jobs client's rejected
  // parsers, and a raw subscription for an unknown jobs topic.
  const v1client = new iotjobs.IotJobsClient(conn);
  await rawReject(conn, 'InvalidJson', `$aws/things/${thingName}/jobs/get`, '{"clientToken": "bad-json", ',
    (h) => v1client.subscribeToGetPendingJobExecutionsRejected({ thingName }, mqtt.QoS.AtLeastOnce, h));
  await rawReject(conn, 'InvalidJsonNotObject', `$aws/things/${thingName}/jobs/${jobId}/update`, '["not", "an", "object"]',
    (h) => v1client.subscribeToUpdateJobExecutionRejected({ thingName, jobId }, mqtt.QoS.AtLeastOnce, h));
  const bogus = `$aws/things/${thingName}/jobs/no-such-operation`;
  await rawReject(conn, 'InvalidTopic', bogus, '{"clientToken":"bogus"}',
    (h) => conn.subscribe(bogus + '/rejected', mqtt.QoS.AtLeastOnce, (_t, payload) => {
      try { h(undefined, JSON.parse(Buffer.from(payload).toString('utf8'))); } catch (e) { h(e); }
    }));

  await conn.disconnect();
}

const watchdog = setTimeout(() => {
  out.fatal = 'watchdog: the script did not finish in 45s';
  process.stdout.write(JSON.stringify(out) + '\n');
  process.exit(3);
}, 45000);

main().then(() => {
  clearTimeout(watchdog);
  process.stdout.write(JSON.stringify(out) + '\n');
  process.exit(0);
}, (e) => {
  clearTimeout(watchdog);
  out.fatal = String(e && e.stack || e);
  process.stdout.write(JSON.stringify(out) + '\n');
  process.exit(2);
});
