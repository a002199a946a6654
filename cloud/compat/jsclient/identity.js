// Fleet provisioning by claim with only the official AWS IoT Device SDK v2
// for JavaScript's identity clients (aws-iot-device-sdk-v2 iotidentity,
// pinned in package-lock.json), run by cloud/compat/identity_test.go
// against bootcert-lab with the real template.
//
// Usage: node identity.js CONFIG.json
//   {"host","port","caFile","claimCertFile","claimKeyFile","clientId",
//    "templateName","serial","csr","refusals":[{"name","csr","serial"}],
//    "deniedSerial","deniedCsr"}
//
// The operational keys never reach this script: the Go test made them and
// passes only their CSRs (PEM). The claim certificate and key are the
// claim credential the SDK connects with.
//
// It prints one JSON object on stdout (every step's result, the SDK's own
// modeled errors, shape errors); diagnostics go to stderr. It exits 0 when
// it ran to the end, whatever the lab answered: the Go test decides.
'use strict';

const fs = require('fs');
const { mqtt, iot, iotidentity } = require('aws-iot-device-sdk-v2');

const cfg = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const out = { sdkVersion: require('aws-iot-device-sdk-v2/package.json').version, steps: {}, shapeErrors: [], rejections: {} };
const log = (...a) => console.error('[identity]', ...a);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------- shapes
// The SDK's model (dist/iotidentity/model.d.ts): every field of the
// responses is a string, deviceConfiguration a map of strings, and
// ErrorResponse / V2ErrorResponse {statusCode: number, errorCode: string,
// errorMessage: string}.
function shape(where, ok, what) {
  if (!ok) out.shapeErrors.push(where + ': ' + what);
}
function isStr(v) { return typeof v === 'string' && v.length > 0; }
function checkKeys(where, v, allowed) {
  for (const k of Object.keys(v || {})) shape(where, allowed.includes(k), `field ${k} is not in the SDK's model`);
}
function checkCreateFromCsr(where, r) {
  shape(where, r && typeof r === 'object', 'response is not an object');
  if (!r) return;
  checkKeys(where, r, ['certificateId', 'certificatePem', 'certificateOwnershipToken']);
  for (const f of ['certificateId', 'certificatePem', 'certificateOwnershipToken']) shape(where, isStr(r[f]), `${f} is not a non-empty string`);
}
function checkRegister(where, r) {
  shape(where, r && typeof r === 'object', 'response is not an object');
  if (!r) return;
  checkKeys(where, r, ['deviceConfiguration', 'thingName']);
  shape(where, isStr(r.thingName), 'thingName is not a non-empty string');
  if (r.deviceConfiguration !== undefined) {
    const m = r.deviceConfiguration;
    shape(where, m !== null && typeof m === 'object' && !Array.isArray(m), 'deviceConfiguration is not an object');
    for (const [k, v] of Object.entries(m || {})) shape(where, typeof v === 'string', `deviceConfiguration.${k} is not a string`);
  }
}
function checkError(where, e) {
  shape(where, e && typeof e === 'object', 'error response is not an object');
  if (!e) return;
  checkKeys(where, e, ['statusCode', 'errorCode', 'errorMessage']);
  shape(where, Number.isInteger(e.statusCode), 'statusCode is not an integer');
  shape(where, isStr(e.errorCode), 'errorCode is not a non-empty string');
  shape(where, isStr(e.errorMessage), 'errorMessage is not a non-empty string');
}

// ---------------------------------------------------------------- steps
async function step(name, fn, check) {
  try {
    const v = await fn();
    out.steps[name] = { ok: true, value: v };
    if (check) check(name, v);
    return v;
  } catch (e) {
    const err = { ok: false, error: String(e && e.message || e) };
    if (e && e.modeledError) err.modeledError = e.modeledError;
    out.steps[name] = err;
    log(name, 'failed:', err.error, e && e.modeledError ? JSON.stringify(e.modeledError) : '');
    return undefined;
  }
}

// reject runs a request the lab must reject; the SDK's ServiceError carries
// the rejected topic's payload, parsed by the SDK (modeledError).
async function reject(name, fn) {
  try {
    const v = await fn();
    out.rejections[name] = { accepted: v };
  } catch (e) {
    if (e && e.modeledError) {
      checkError('rejection ' + name, e.modeledError);
      out.rejections[name] = e.modeledError;
    } else {
      out.rejections[name] = { clientError: String(e && e.message || e) };
    }
  }
}

function connection(bootstrap) {
  const b = iot.AwsIotMqttConnectionConfigBuilder.new_mtls_builder_from_path(cfg.claimCertFile, cfg.claimKeyFile);
  b.with_certificate_authority_from_path(undefined, cfg.caFile);
  b.with_endpoint(cfg.host);
  b.with_port(cfg.port);
  b.with_client_id(cfg.clientId);
  b.with_clean_session(true);
  b.with_keep_alive_seconds(30);
  b.with_ping_timeout_ms(5000);
  b.with_timeout_ms(5000);
  return new mqtt.MqttClient(bootstrap).new_connection(b.build());
}

async function main() {
  const bootstrap = new (require('aws-crt').io.ClientBootstrap)();
  const conn = connection(bootstrap);
  conn.on('error', (e) => log('connection error event:', String(e)));
  if (!(await step('connect', async () => { await conn.connect(); return true; }))) return;

  const identity = iotidentity.IotIdentityClientv2.newFromMqtt311(conn, {
    maxRequestResponseSubscriptions: 4, maxStreamingSubscriptions: 1, operationTimeoutInSeconds: 15,
  });
  const templateName = cfg.templateName;

  // The flow of a device: its CSR, then RegisterThing with the token.
  const created = await step('createCertificateFromCsr',
    () => identity.createCertificateFromCsr({ certificateSigningRequest: cfg.csr }), checkCreateFromCsr);
  if (created) {
    await step('registerThing', () => identity.registerThing({
      templateName, certificateOwnershipToken: created.certificateOwnershipToken, parameters: { SerialNumber: cfg.serial },
    }), checkRegister);
    // The token is single-use.
    await reject('tokenReused', () => identity.registerThing({
      templateName, certificateOwnershipToken: created.certificateOwnershipToken, parameters: { SerialNumber: cfg.serial },
    }));
  }

  // Devices the pre-provisioning hook refuses, each with its own CSR:
  // cfg.refusals = [{name, csr, serial}].
  out.refusedCertificateIds = {};
  for (const rf of cfg.refusals) {
    const c = await step('createCertificateFromCsr ' + rf.name,
      () => identity.createCertificateFromCsr({ certificateSigningRequest: rf.csr }), checkCreateFromCsr);
    if (!c) continue;
    out.refusedCertificateIds[rf.name] = c.certificateId;
    await reject(rf.name, () => identity.registerThing({
      templateName, certificateOwnershipToken: c.certificateOwnershipToken, parameters: { SerialNumber: rf.serial },
    }));
  }
  // Requests the lab rejects before the hook.
  await reject('unknownToken', () => identity.registerThing({
    templateName, certificateOwnershipToken: 'not-a-token', parameters: { SerialNumber: cfg.serial },
  }));
  await reject('badCsr', () => identity.createCertificateFromCsr({ certificateSigningRequest: '-----BEGIN CERTIFICATE REQUEST-----\nbm90IGEgQ1NS\n-----END CERTIFICATE REQUEST-----\n' }));
  identity.close();
  // The v2 client's close unsubscribes from its reply topics on the CRT's
  // event loop, after close() returns. On the same connection an
  // UNSUBSCRIBE that lands after the v1 client's SUBSCRIBE to the same
  // topic would remove it and the v1 reply would not be delivered (the
  // lab, like AWS, delivers replies only to subscribed clients), so the v1
  // client gets a connection of its own.
  await conn.disconnect();
  const conn1 = connection(bootstrap);
  conn1.on('error', (e) => log('connection error event:', String(e)));
  if (!(await step('connect v1', async () => { await conn1.connect(); return true; }))) return;

  // The v1 identity client (the one AWS's fleet provisioning sample used):
  // its typed rejected-topic parser, for a device on the deny list.
  const v1 = new iotidentity.IotIdentityClient(conn1);
  let createdV1, acceptedV1, rejectedV1;
  await v1.subscribeToCreateCertificateFromCsrAccepted({}, mqtt.QoS.AtLeastOnce, (err, r) => { createdV1 = err ? { clientError: String(err.message || err) } : r; });
  await v1.subscribeToCreateCertificateFromCsrRejected({}, mqtt.QoS.AtLeastOnce, (err, r) => { createdV1 = { rejected: err ? String(err.message || err) : r }; });
  await v1.subscribeToRegisterThingAccepted({ templateName }, mqtt.QoS.AtLeastOnce, (err, r) => { acceptedV1 = err ? { clientError: String(err.message || err) } : r; });
  await v1.subscribeToRegisterThingRejected({ templateName }, mqtt.QoS.AtLeastOnce, (err, r) => { rejectedV1 = err ? { clientError: String(err.message || err) } : r; });
  await v1.publishCreateCertificateFromCsr({ certificateSigningRequest: cfg.deniedCsr }, mqtt.QoS.AtLeastOnce);
  for (let i = 0; i < 200 && createdV1 === undefined; i++) await sleep(50);
  if (createdV1 && createdV1.certificateOwnershipToken) {
    checkCreateFromCsr('v1 createCertificateFromCsr', createdV1);
    out.refusedCertificateIds.hookRefusedDenied = createdV1.certificateId;
    await v1.publishRegisterThing({ templateName, certificateOwnershipToken: createdV1.certificateOwnershipToken, parameters: { SerialNumber: cfg.deniedSerial } }, mqtt.QoS.AtLeastOnce);
    for (let i = 0; i < 200 && rejectedV1 === undefined && acceptedV1 === undefined; i++) await sleep(50);
    if (rejectedV1 && !rejectedV1.clientError) checkError('v1 rejection hookRefusedDenied', rejectedV1);
    out.rejections.hookRefusedDenied = rejectedV1 || (acceptedV1 ? { accepted: acceptedV1 } : { clientError: 'no reply within 10s' });
  } else {
    out.steps.v1CreateCertificateFromCsr = { ok: false, error: JSON.stringify(createdV1 || 'no reply within 10s') };
  }

  await conn1.disconnect();
}

const watchdog = setTimeout(() => {
  out.fatal = 'watchdog: the script did not finish in 80s';
  process.stdout.write(JSON.stringify(out) + '\n');
  process.exit(3);
}, 80000);

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
