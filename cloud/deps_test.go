package cloud_test

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestLambdaDependencies checks what `make lambdas` links: the functions
// build without cgo for linux/arm64 and pull in neither the lab nor any
// hardware key backend.
func TestLambdaDependencies(t *testing.T) {
	cmd := exec.Command("go", "list", "-deps", "-tags", "lambda.norpc", "../cmd/lambda/...")
	cmd.Env = append(os.Environ(), "GOOS=linux", "GOARCH=arm64", "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, bad := range []string{"bootcert/cloud/lab", "bootcert/keystore", "crypto11", "miekg/pkcs11", "mochi-mqtt", "go-tpm"} {
		for _, line := range strings.Split(string(out), "\n") {
			if strings.Contains(line, bad) {
				t.Errorf("the Lambda functions depend on %s", line)
			}
		}
	}
	if !strings.Contains(string(out), "github.com/aws/aws-lambda-go/lambda") {
		t.Errorf("aws-lambda-go not linked")
	}
}
