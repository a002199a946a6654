#!/usr/bin/env bash
# station-demo.sh: the factory runbook of docs/factory.md, run end to end on
# one machine with stand-ins: SoftHSM2 as the station's HSM (holding the
# factory CA key) and swtpm on 127.0.0.1 as the device's TPM. Everything lives
# in a temporary directory and is removed at the end; nothing system-wide is
# started. Needs: bootcertctl (BOOTCERTCTL or PATH), softhsm2, swtpm, openssl.
#
#   packaging/factory/station-demo.sh            # run and clean up
#   KEEP=1 packaging/factory/station-demo.sh     # keep the directory
set -euo pipefail

CTL=${BOOTCERTCTL:-bootcertctl}
command -v "$CTL" >/dev/null || { echo "station-demo: $CTL not found (make build; BOOTCERTCTL=bin/bootcertctl)" >&2; exit 1; }
for p in softhsm2-util swtpm openssl; do
  command -v $p >/dev/null || { echo "station-demo: $p not found (run make deps)" >&2; exit 1; }
done
MODULE=/usr/lib/softhsm/libsofthsm2.so

W=$(mktemp -d /tmp/bootcert-station.XXXXXX)
SWTPM_PID=
cleanup() {
  [ -n "$SWTPM_PID" ] && kill "$SWTPM_PID" 2>/dev/null && wait "$SWTPM_PID" 2>/dev/null || true
  if [ -z "${KEEP:-}" ]; then rm -rf "$W"; else echo "kept $W"; fi
}
trap cleanup EXIT
step() { printf '\n== %s\n' "$*"; }

step "station HSM: a SoftHSM2 token 'factory' with a PIN file"
mkdir -p "$W/hsm/tokens" "$W/station" "$W/device/keys" "$W/out"
printf 'directories.tokendir = %s/hsm/tokens\nobjectstore.backend = file\nlog.level = ERROR\n' "$W" > "$W/hsm/softhsm2.conf"
export SOFTHSM2_CONF=$W/hsm/softhsm2.conf
softhsm2-util --init-token --free --label factory --pin 4711-station --so-pin 0815-so >/dev/null
install -m 600 /dev/null "$W/station/hsm-pin" && printf '4711-station' > "$W/station/hsm-pin"
CA_KEY="pkcs11:token=factory;object=factory-ca?module-path=$MODULE&pin-source=file:$W/station/hsm-pin"

step "device TPM: swtpm on 127.0.0.1"
PORT=$(( 20000 + RANDOM % 20000 ))
mkdir -p "$W/tpmstate"
swtpm socket --tpm2 --server type=tcp,port=$PORT,bindaddr=127.0.0.1 --ctrl type=tcp,port=$((PORT+1)),bindaddr=127.0.0.1 \
  --tpmstate dir="$W/tpmstate" --flags not-need-init,startup-clear &
SWTPM_PID=$!
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
TPM="tcp:127.0.0.1:$PORT"

step "1. factory CA, key in the HSM"
"$CTL" ca create --out "$W/station/ca" --cn "Demo Factory CA" --key "$CA_KEY"
"$CTL" key info "$CA_KEY"

step "2. provision gw-0001 (bootstrap key in the device TPM)"
"$CTL" provision --device-id gw-0001 \
  --key "tpm:device=$TPM;blob=$W/device/keys/bootstrap.tpmkey" \
  --cert-out "$W/device/bootstrap.pem" \
  --ca-cert "$W/station/ca/ca.pem" --ca-key "$CA_KEY" \
  --manifest "$W/station/manifest.csv" | tee "$W/out/gw-0001.json"

step "3. check: certificate chain, key attributes"
openssl verify -CAfile "$W/station/ca/ca.pem" "$W/device/bootstrap.pem"
"$CTL" key info "tpm:device=$TPM;blob=$W/device/keys/bootstrap.tpmkey"

step "4. re-run: reports the existing identity, changes nothing"
"$CTL" provision --device-id gw-0001 \
  --key "tpm:device=$TPM;blob=$W/device/keys/bootstrap.tpmkey" \
  --cert-out "$W/device/bootstrap.pem" \
  --ca-cert "$W/station/ca/ca.pem" --ca-key "$CA_KEY" \
  --manifest "$W/station/manifest.csv" | grep '"status"'

step "5. pre-provisioned mode: gw-0002 with its operational key too"
"$CTL" provision --device-id gw-0002 \
  --key "tpm:device=$TPM;blob=$W/device/keys/gw-0002-bootstrap.tpmkey" \
  --final-key "tpm:device=$TPM;blob=$W/device/keys/gw-0002-op.tpmkey" \
  --cert-out "$W/device/gw-0002.pem" \
  --ca-cert "$W/station/ca/ca.pem" --ca-key "$CA_KEY" \
  --manifest "$W/station/manifest.csv" > "$W/out/gw-0002.json"
grep -E '"(status|final_csr_sha256)"' "$W/out/gw-0002.json"

step "6. manifest (allow list)"
cut -c1-110 "$W/station/manifest.csv"

step "7. revoke gw-0002, CRL signed by the HSM CA"
"$CTL" ca revoke --ca-cert "$W/station/ca/ca.pem" --ca-key "$CA_KEY" --crl "$W/station/ca/crl.pem" --cert "$W/device/gw-0002.pem"
openssl crl -in "$W/station/ca/crl.pem" -CAfile "$W/station/ca/ca.pem" -noout -verify

step "8. bad input changes nothing"
if "$CTL" provision --device-id 'bad/id' --key "tpm:device=$TPM;blob=$W/device/keys/x.tpmkey" \
     --cert-out "$W/device/x.pem" --ca-cert "$W/station/ca/ca.pem" --ca-key "$CA_KEY" --manifest "$W/station/manifest.csv"; then
  echo "station-demo: an invalid device ID was accepted" >&2; exit 1
fi
test ! -e "$W/device/keys/x.tpmkey"

step "upload: manifest -> s3://BUCKET/trust/allow-list.csv, crl.pem -> trust/factory.crl, ca.pem -> trust/factory-ca.pem"
echo "station-demo: OK"
