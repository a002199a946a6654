package cloudaws

import (
	"context"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"

	"github.com/bootcert/bootcert/cloud/ports"
)

var _ ports.JobCreator = (*Registry)(nil)

// CreateJob implements ports.JobCreator: a SNAPSHOT job whose targets are
// the things' ARNs (DescribeThing gives each ARN), with the spec's
// TimeoutConfig, JobExecutionsRolloutConfig and AbortConfig
// (https://docs.aws.amazon.com/iot/latest/apireference/API_CreateJob.html).
func (r *Registry) CreateJob(ctx context.Context, spec ports.JobSpec) error {
	in := &iot.CreateJobInput{
		JobId: aws.String(spec.ID), Document: aws.String(spec.Document),
		TargetSelection: types.TargetSelectionSnapshot,
	}
	if spec.Description != "" {
		in.Description = aws.String(spec.Description)
	}
	for _, t := range spec.Things {
		out, err := r.IoT.DescribeThing(ctx, &iot.DescribeThingInput{ThingName: aws.String(t)})
		if err != nil {
			return mapErr("DescribeThing", t, err)
		}
		in.Targets = append(in.Targets, aws.ToString(out.ThingArn))
	}
	if m := int64(spec.InProgressTimeout.Minutes()); m > 0 {
		in.TimeoutConfig = &types.TimeoutConfig{InProgressTimeoutInMinutes: aws.Int64(m)}
	}
	if spec.MaxPerMinute > 0 {
		in.JobExecutionsRolloutConfig = &types.JobExecutionsRolloutConfig{MaximumPerMinute: aws.Int32(int32(spec.MaxPerMinute))}
	}
	if spec.AbortThresholdPercent > 0 {
		in.AbortConfig = &types.AbortConfig{CriteriaList: []types.AbortCriteria{{
			Action: types.AbortActionCancel, FailureType: types.JobExecutionFailureTypeAll,
			MinNumberOfExecutedThings: aws.Int32(int32(max(1, spec.AbortMinExecuted))),
			ThresholdPercentage:       aws.Float64(spec.AbortThresholdPercent),
		}}}
	}
	if _, err := r.IoT.CreateJob(ctx, in); err != nil {
		return mapErr("CreateJob", spec.ID, err)
	}
	return nil
}
