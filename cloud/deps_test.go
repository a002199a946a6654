package cloud_test

import (
	"slices"
	"testing"

	"github.com/bootcert/bootcert/internal/testkit"
)

// TestLambdaDependencies checks what `make lambdas` links: the functions
// build without cgo for linux/arm64 and pull in neither the lab nor any
// hardware key backend. The vendor verifies TPM attestations (package
// attest), which parses TPM structures with go-tpm's tpm2 package: that
// pure-Go parser is allowed, no TPM transport, simulator or key file is.
func TestLambdaDependencies(t *testing.T) {
	deps := testkit.Deps(t, "./cmd/lambda/...", "lambda.norpc", "GOOS=linux", "GOARCH=arm64", "CGO_ENABLED=0")
	bad := testkit.ForbiddenDeps(deps,
		"github.com/bootcert/bootcert/cloud/lab", "github.com/bootcert/bootcert/keystore",
		"github.com/ThalesGroup/crypto11", "github.com/miekg/pkcs11", "github.com/mochi-mqtt/server/v2",
		"github.com/google/go-tpm-tools", "github.com/foxboron/go-tpm-keyfiles",
		"github.com/google/go-tpm/tpm2/transport/linuxtpm", "github.com/google/go-tpm/tpm2/transport/linuxudstpm",
		"github.com/google/go-tpm/tpm2/transport/simulator", "github.com/google/go-tpm/tpm2/transport/tcp",
		"github.com/google/go-tpm/tpm2/transport/windowstpm", "github.com/google/go-tpm/legacy/tpm2/credactivation")
	if !deps["github.com/bootcert/bootcert/attest"] {
		t.Errorf("the vendor does not link the attestation verifier")
	}
	if len(bad) > 0 {
		slices.Sort(bad)
		t.Errorf("the Lambda functions depend on %v", bad)
	}
	if !deps["github.com/aws/aws-lambda-go/lambda"] {
		t.Errorf("aws-lambda-go not linked")
	}
}
