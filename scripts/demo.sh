#!/usr/bin/env bash
# make demo [SCENARIO=default|rollback|crash|fleet-provisioning] [KEEP=1]: bootcert end to end on
# this machine (package internal/demo; docs/demo.md). Builds what it needs
# into $BIN (default bin/), then runs the demo driver, which starts swtpm,
# bootcert-lab and bootcertd on 127.0.0.1 in a temporary directory and stops
# them at the end. RESULT=FILE writes the final state as JSON (the test uses it).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH
GO=${GO:-go}
BIN=${BIN:-bin}
SCENARIO=${SCENARIO:-default}
case "$SCENARIO" in
  default|rollback|crash|fleet-provisioning) ;;
  *) echo "demo: SCENARIO=$SCENARIO: want default, rollback, crash or fleet-provisioning" >&2; exit 2 ;;
esac
command -v swtpm >/dev/null || { echo "demo: swtpm not found (make deps installs it)" >&2; exit 1; }
mkdir -p "$BIN"
$GO build -o "$BIN/" ./cmd/bootcertd ./cmd/bootcertctl ./cmd/bootcert-admin ./cmd/bootcert-lab
$GO build -o "$BIN/bootcert-demo" ./internal/demo/cmd
args=(-scenario "$SCENARIO" -bin "$BIN" -template cloud/template.yaml)
[ -n "${RESULT:-}" ] && args+=(-result "$RESULT")
[ "${KEEP:-}" = 1 ] && args+=(-keep)
exec "$BIN/bootcert-demo" "${args[@]}"
