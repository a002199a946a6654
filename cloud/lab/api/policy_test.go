package api

import (
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

// TestMalformedPolicies: CreatePolicy and CreatePolicyVersion validate the
// document with the grammar the broker enforces (cloud/lab/policy) and
// answer MalformedPolicyException (HTTP 400) naming the problem, as AWS does.
func TestMalformedPolicies(t *testing.T) {
	l := startLab(t, labOpts{})
	c := l.client(t, "AKID", "secret", 1)
	good := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Connect","Resource":"*"}]}`
	if _, err := c.CreatePolicy(ctx, &iot.CreatePolicyInput{PolicyName: aws.String("p"), PolicyDocument: aws.String(good)}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, doc, want string }{
		{"fail/not JSON", `{`, "not a JSON object"},
		{"fail/no Statement", `{"Version":"2012-10-17"}`, "Statement"},
		{"fail/empty Statement", `{"Version":"2012-10-17","Statement":[]}`, "Statement is empty"},
		{"fail/bad Effect", `{"Version":"2012-10-17","Statement":[{"Effect":"Maybe","Action":"iot:Connect","Resource":"*"}]}`, "Maybe"},
		{"fail/unknown top-level key", `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Connect","Resource":"*"}],"Foo":1}`, `"Foo"`},
		{"fail/too long", `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Connect","Resource":"` + strings.Repeat("a", 2100) + `"}]}`, "2048"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for op, call := range map[string]func() error{
				"CreatePolicy": func() error {
					_, err := c.CreatePolicy(ctx, &iot.CreatePolicyInput{PolicyName: aws.String("q"), PolicyDocument: aws.String(tc.doc)})
					return err
				},
				"CreatePolicyVersion": func() error {
					_, err := c.CreatePolicyVersion(ctx, &iot.CreatePolicyVersionInput{PolicyName: aws.String("p"), PolicyDocument: aws.String(tc.doc), SetAsDefault: true})
					return err
				},
			} {
				err := call()
				var mp *types.MalformedPolicyException
				var re *smithyhttp.ResponseError
				if !errors.As(err, &mp) || !errors.As(err, &re) || re.HTTPStatusCode() != http.StatusBadRequest {
					t.Fatalf("%s: %v, want MalformedPolicyException (HTTP 400)", op, err)
				}
				if !strings.Contains(aws.ToString(mp.Message), tc.want) {
					t.Errorf("%s: message %q does not name the problem (%q)", op, aws.ToString(mp.Message), tc.want)
				}
			}
		})
	}
	// Nothing was created or changed.
	if _, err := c.GetPolicy(ctx, &iot.GetPolicyInput{PolicyName: aws.String("q")}); err == nil {
		t.Error("a malformed policy was created")
	}
	gp, err := c.GetPolicy(ctx, &iot.GetPolicyInput{PolicyName: aws.String("p")})
	if err != nil || aws.ToString(gp.PolicyDocument) != good || aws.ToString(gp.DefaultVersionId) != "1" {
		t.Errorf("policy p after malformed versions: %v %v", gp, err)
	}
}
