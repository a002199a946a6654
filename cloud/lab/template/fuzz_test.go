package template

import (
	"errors"
	"os"
	"testing"
)

// FuzzParse: no template text may crash the loader; every error wraps one of
// the package's sentinels.
func FuzzParse(f *testing.F) {
	if b, err := os.ReadFile(labTemplate); err == nil {
		f.Add(b)
	}
	for _, s := range []string{
		"Resources:\n  A:\n    Type: AWS::S3::Bucket\n",
		"Resources:\n  P:\n    Type: AWS::IoT::Policy\n    Properties:\n      PolicyDocument: !Sub '${!iot:ClientId}'\n",
		"Resources: {R: {Type: AWS::IoT::TopicRule, Properties: {TopicRulePayload: {Sql: \"SELECT * FROM 'a'\", Actions: [{Lambda: {FunctionArn: !GetAtt [F, Arn]}}]}}}}",
		"Resources: {X: {Type: AWS::S3::Bucket, Properties: {BucketName: !Sub ['${a}', {a: !Ref X}]}}}",
		"[]", "", "Resources: 5",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		_, err := Parse(data, Options{})
		if err != nil && !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrUnsupported) {
			t.Fatalf("error wraps no sentinel: %v", err)
		}
	})
}
