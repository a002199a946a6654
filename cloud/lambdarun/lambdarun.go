// Package lambdarun runs one cloud function under the AWS Lambda Go runtime
// (provided.al2023, binary named bootstrap). The mains in cmd/lambda/<name>
// call Main with their template logical ID.
package lambdarun

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-sdk-go-v2/config"

	"github.com/bootcert/bootcert/cloud"
)

// Main builds the function from the standard AWS configuration and the
// process environment and serves it. It does not return.
func Main(logicalID string) {
	ctx := context.Background()
	log := slog.New(slog.NewJSONHandler(os.Stdout, nil))
	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		fail(log, logicalID, fmt.Errorf("loading the AWS configuration: %w", err))
	}
	fn, err := cloud.Build(ctx, logicalID, os.Getenv, cloud.Deps{AWS: cfg, Logger: log})
	if err != nil {
		fail(log, logicalID, err)
	}
	lambda.Start(func(ctx context.Context, event json.RawMessage) (json.RawMessage, error) {
		return fn(ctx, event)
	})
}

func fail(log *slog.Logger, id string, err error) {
	log.Error("cannot start", "function", id, "err", err)
	os.Exit(1)
}
