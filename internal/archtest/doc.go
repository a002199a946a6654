// Package archtest holds no code: its tests enforce bootcert's architecture
// on the real import graph (go list), so that a forbidden import fails
// `go test ./...` instead of being found in a review:
//
//   - bootcertd, as released (cgo, tag nosimulator; and a static
//     CGO_ENABLED=0 build of another architecture), links no cloud code,
//     no AWS SDK, no MQTT broker (mochi), no cobra, no TPM simulator, no
//     BurntSushi/toml (daemon/config decodes its TOML itself),
//     and (by its symbol table) not net/http's client: Transport, HTTP/2,
//     Client (a location is one GET over crypto/tls, daemon/fetch.go);
//   - the gateway's bootcertctl links no cloud code and no AWS SDK (the
//     account-level commands live in bootcert-admin, packaged apart);
//   - only the lab's main (cmd/bootcert-lab), the demo (internal/demo), the
//     benchmarks (bench/...) and tests import the lab (cloud/lab/...).
//
// The rule that ctl does not import the rotation engine lives with the
// engine's control-socket wire type.
package archtest
