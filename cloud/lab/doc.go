// Package lab assembles bootcert-lab, a local stand-in for the AWS IoT Core,
// Jobs and S3 features bootcert uses, so that the whole system runs and is
// tested on one machine. It is for development, demos, CI and fleet
// simulation, never a production broker.
//
// # Running it
//
//	bootcert-lab serve --data DIR [--mqtt ADDR] [--api ADDR] [--s3 ADDR]
//	                   [--template FILE|none] [--parameter NAME=VALUE ...]
//	                   [--limits FILE|aws-default] [--credentials FILE] [--log-level LEVEL]
//	                   [--fault refuse-issued-certificates] [--write-behind DURATION]
//
// When ready it prints one JSON line, {"mqtt":"127.0.0.1:8883",
// "api":"https://127.0.0.1:8443","s3":"https://127.0.0.1:PORT",...}, and
// writes it to DIR/endpoints.json next to DIR/server-ca.pem (trust it in
// clients). All state persists in DIR: registry.json (CAs, certificates,
// things, groups, policies, jobs, executions), s3.db, pki/ (the lab's CAs
// and TLS key). Registry changes are answered before registry.json is
// rewritten and saved at most --write-behind (default 200ms) plus one write
// later; --write-behind 0 puts each change on disk before its answer.
// SIGTERM stops it cleanly, saving everything. Tests start one in-process:
//
//	l, err := lab.Start(ctx, lab.Config{DataDir: t.TempDir(), MQTTAddr: "127.0.0.1:0", APIAddr: "127.0.0.1:0", S3Addr: "127.0.0.1:0"})
//	defer l.Close()
//	iot.NewFromConfig(lab.ClientConfig(l.ServerCAPEM(), "us-east-1"), func(o *iot.Options) { o.BaseEndpoint = aws.String(l.Endpoints().API) })
//
// # What it does
//
//   - MQTT 3.1.1 over TLS 1.2/1.3 with client certificates (ALPN
//     x-amzn-mqtt-ca accepted), package broker on mochi-mqtt. An unknown
//     certificate issued by a registered CA with auto-registration is
//     registered PENDING_ACTIVATION, $aws/events/certificates/registered/{caId}
//     is published and the connection closed (JITR). Only ACTIVE
//     certificates within their validity connect; making one INACTIVE,
//     REVOKED or deleting it ends its live sessions.
//   - IoT policies on every iot:Connect, iot:Publish, iot:Subscribe and
//     iot:Receive, from the policies attached to the certificate (and to the
//     groups of its thing when the client ID is the name of a thing attached
//     to it), with AWS's MQTT 3.1.1 effects: refused connect = connection
//     closed, refused publish = client disconnected, refused subscribe =
//     SUBACK 0x80, refused receive = message not delivered. Every decision
//     is logged with the policy and statement that decided it.
//   - The Jobs device MQTT API on $aws/things/{thing}/jobs/...: get,
//     start-next, {jobId}/get ($next too), {jobId}/update, with
//     accepted/rejected replies, notify and notify-next, and
//     $aws/events/jobExecution/{jobId}/{status}, like AWS only while the
//     JOB_EXECUTION event configuration is enabled (UpdateEventConfigurations;
//     bootcertctl cloud setup enables it).
//   - The template's topic rules (AWS IoT SQL subset) with Lambda actions
//     that call the cloud functions in-process (built with cloud.Build from
//     the template's environment, or Config.Functions), asynchronously on a
//     bounded worker pool like AWS's asynchronous invocation (so
//     invocations are concurrent and unordered), republish actions and
//     error actions. The template's Schedule events (rate expressions) run
//     on the lab's clock (Config.Clock; a test's clock.Fake fires them by
//     Advance), as EventBridge runs them on AWS.
//     POST /lab/functions/{logicalId}/invoke runs one synchronously; GET /lab/state shows the registry, broker sessions,
//     function and rule counters.
//   - The IoT control-plane REST API and data-plane Publish for
//     aws-sdk-go-v2 (package api), S3 through gofakes3 (package s3, with
//     conditional PutObject: If-None-Match "*" answers 412). Like
//     AWS's iot:Data-ATS endpoint, the MQTT port also answers the HTTPS
//     data plane (POST /topics/{topic}, SigV4), and DescribeEndpoint
//     iot:Data-ATS returns it.
//   - Quotas from --limits: connects per second (account and client ID)
//     refuse the connect; publishes per connection drop the message
//     without PUBACK; API rates answer ThrottlingException.
//   - Fault injection (faults.go): GET /lab/faults shows and POST
//     /lab/faults replaces the injected faults, e.g.
//     {"refuseIssuedCertificates":true}: the CONNECT of any certificate
//     issued by the lab's own CA (CreateCertificateFromCsr, the new
//     certificate of a rotation) is refused as if IoT Core rejected it,
//     logged "connect refused" with reason "refused by fault injection";
//     factory-CA certificates still connect. bootcert-lab serve --fault
//     refuse-issued-certificates turns it on at start (make demo
//     SCENARIO=rollback uses it). GET /lab/state shows them under "faults".
//
// # Differences from AWS worth knowing
//
// Endpoints are host:port on 127.0.0.1 (AWS: a host name, port 8883/443).
// Requested QoS 2 is downgraded to 1 (AWS sends no PUBACK/SUBACK for QoS 2).
// Lifecycle events ($aws/events/presence/connected|disconnected/{clientId})
// are published, but not the connect-failure or subscribe events. A will
// (LWT) whose topic the policies refuse is dropped at CONNECT; wills are not
// seen by topic rules. Any SigV4
// credentials are accepted (IoT API and S3) unless --credentials is given,
// but every request must be scoped to the lab's region and the endpoint's
// service; each template function signs with its own role's key pair and
// the lab's S3 and IoT API (control plane and data-plane Publish) authorize
// its requests with the role's IAM policies (package iam, api/iam.go;
// docs/cloud.md "What the lab does not reproduce"). Region
// us-east-1 and account 123456789012 unless configured.
package lab
