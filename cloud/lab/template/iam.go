package template

import (
	"fmt"
	"maps"
	"slices"

	"github.com/bootcert/bootcert/cloud/lab/iam"
)

// samPolicyTemplates are the SAM policy templates the lab expands, as the
// "AWS SAM policy template list" documents them
// (https://docs.aws.amazon.com/serverless-application-model/latest/developerguide/serverless-policy-template-list.html):
// the actions of each, on the bucket and its objects.
var samPolicyTemplates = map[string][]string{
	"S3ReadPolicy":  {"s3:GetObject", "s3:ListBucket", "s3:GetBucketLocation", "s3:GetObjectVersion", "s3:GetLifecycleConfiguration"},
	"S3WritePolicy": {"s3:PutObject", "s3:PutObjectAcl", "s3:PutLifecycleConfiguration"},
	"S3CrudPolicy": {"s3:GetObject", "s3:ListBucket", "s3:GetBucketLocation", "s3:GetObjectVersion", "s3:PutObject",
		"s3:PutObjectAcl", "s3:GetLifecycleConfiguration", "s3:PutLifecycleConfiguration", "s3:DeleteObject"},
}

// logsOnlyManagedPolicies are AWS managed policies that grant nothing the
// lab serves (CloudWatch Logs only); SAM attaches the first to every
// function role it creates.
var logsOnlyManagedPolicies = map[string]bool{
	"AWSLambdaBasicExecutionRole":                                      true,
	"arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole": true,
}

// functionPolicies returns the IAM policies of a function's role: the SAM
// Policies property (a managed policy name, an inline document, a SAM
// policy template, or a list of those).
func (r *resolver) functionPolicies(fnID string) ([]*iam.Document, error) {
	props, _ := r.resources[fnID]["Properties"].(map[string]any)
	raw, ok := props["Policies"]
	if !ok {
		return nil, nil
	}
	// A value the lab cannot resolve (the ARN of a resource type it does
	// not model, e.g. an SQS queue) stays as its "[lab-unresolved: ...]"
	// marker: a resource no request to the lab ever names, so the
	// statement grants nothing the lab serves, which is what it grants on
	// AWS as far as the lab can tell.
	v := r.resolveRaw(raw)
	items, ok := v.([]any)
	if !ok {
		items = []any{v}
	}
	var out []*iam.Document
	for i, it := range items {
		where := fmt.Sprintf("function %s Policies[%d]", fnID, i)
		switch x := it.(type) {
		case string:
			if logsOnlyManagedPolicies[x] {
				continue
			}
			return nil, fmt.Errorf("%w: %s: managed policy %q (the lab knows the documents of inline policies and SAM policy templates only)", ErrUnsupported, where, x)
		case map[string]any:
			if _, ok := x["Statement"]; ok {
				d, err := iam.FromValue(x)
				if err != nil {
					return nil, fmt.Errorf("%w: %s: %w", ErrInvalid, where, err)
				}
				out = append(out, d)
				continue
			}
			if len(x) != 1 {
				return nil, fmt.Errorf("%w: %s: neither a policy document nor one SAM policy template", ErrInvalid, where)
			}
			name := slices.Collect(maps.Keys(x))[0]
			actions, ok := samPolicyTemplates[name]
			if !ok {
				return nil, fmt.Errorf("%w: %s: SAM policy template %s (the lab expands %v)", ErrUnsupported, where, name, slices.Sorted(maps.Keys(samPolicyTemplates)))
			}
			params, _ := x[name].(map[string]any)
			bucket, _ := params["BucketName"].(string)
			if bucket == "" {
				return nil, fmt.Errorf("%w: %s: %s needs BucketName", ErrInvalid, where, name)
			}
			acts := make([]any, len(actions))
			for i, a := range actions {
				acts[i] = a
			}
			d, err := iam.FromValue(map[string]any{"Version": "2012-10-17", "Statement": []any{map[string]any{
				"Effect": "Allow", "Action": acts,
				"Resource": []any{"arn:aws:s3:::" + bucket, "arn:aws:s3:::" + bucket + "/*"},
			}}})
			if err != nil {
				return nil, fmt.Errorf("%w: %s: %w", ErrInvalid, where, err)
			}
			out = append(out, d)
		default:
			return nil, fmt.Errorf("%w: %s: %v is not a policy", ErrInvalid, where, it)
		}
	}
	return out, nil
}
