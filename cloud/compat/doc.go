// Package compat holds compatibility tests that run clients and runtimes
// nobody in this project wrote against bootcert-lab and the cloud code:
//
//   - jsclient_test.go: the official AWS IoT Device SDK v2 for JavaScript
//     (npm aws-iot-device-sdk-v2, pinned in jsclient/package-lock.json,
//     installed with `npm ci`) as a second device client: JITR, the Jobs
//     MQTT API through the SDK's jobs clients, every rejection code the lab
//     can produce.
//   - identity_test.go: the same SDK's identity clients (iotidentity:
//     IotIdentityClientv2 and IotIdentityClient) onboard by fleet
//     provisioning by claim with the template bootcert-fleet and its
//     pre-provisioning hook: CreateCertificateFromCsr, RegisterThing, and
//     the rejections (ownership token, CSR, hook refusals) as the SDK
//     parses them.
//   - rie_test.go: every Lambda zip from scripts/lambdas.sh run under the
//     AWS Lambda Runtime Interface Emulator (tools/go.mod), configured only
//     by the template's environment variables plus the SDK's endpoint
//     overrides, answering representative events against the lab.
//   - iam_test.go: every AWS SDK call in cloud/aws is granted by the
//     template's role policy of each function that makes it, and every
//     granted action exists in the SDK; cfn-lint on the template where it
//     is installed.
//
// The package has no non-test code besides this comment.
package compat
