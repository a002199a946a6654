package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"

	"github.com/bootcert/bootcert/cloud/lab"
)

// TestWriteBehindSurvivesSIGTERM: the binary answers registry changes
// before registry.json is written (write-behind, the default); SIGTERM
// right after a burst of changes still saves every one of them. The long
// interval makes sure the last change is still unwritten at SIGTERM.
func TestWriteBehindSurvivesSIGTERM(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	client := func(r *running) *iot.Client {
		caPEM, err := os.ReadFile(filepath.Join(dir, "server-ca.pem"))
		if err != nil {
			t.Fatal(err)
		}
		return iot.NewFromConfig(lab.ClientConfig(caPEM, "us-east-1"), func(o *iot.Options) { o.BaseEndpoint = aws.String(r.ep["api"]) })
	}
	r := serve(t, dir, "--write-behind", "1m")
	api := client(r)
	const n = 50
	for i := range n {
		if _, err := api.CreateThing(ctx, &iot.CreateThingInput{ThingName: aws.String(fmt.Sprintf("wb-%03d", i))}); err != nil {
			t.Fatal(err)
		}
	}
	// The last change, then SIGTERM at once.
	if _, err := api.UpdateThing(ctx, &iot.UpdateThingInput{ThingName: aws.String("wb-049"),
		AttributePayload: &types.AttributePayload{Attributes: map[string]string{"last": "change"}}}); err != nil {
		t.Fatal(err)
	}
	r.stop(t)

	r2 := serve(t, dir)
	api2 := client(r2)
	for i := range n {
		if _, err := api2.DescribeThing(ctx, &iot.DescribeThingInput{ThingName: aws.String(fmt.Sprintf("wb-%03d", i))}); err != nil {
			t.Fatalf("after SIGTERM and restart: %v", err)
		}
	}
	d, err := api2.DescribeThing(ctx, &iot.DescribeThingInput{ThingName: aws.String("wb-049")})
	if err != nil || d.Attributes["last"] != "change" {
		t.Fatalf("the change made just before SIGTERM is lost: %v %v", d, err)
	}
	r2.stop(t)
}
