package cloudaws

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"

	"github.com/bootcert/bootcert/cloud/ports"
)

// SigningName is the SigV4 service name of the IoT data plane: "iotdata",
// the name of the aws.auth#sigv4 trait of the IoT data service model, which
// every AWS SDK signs Publish with. AWS's IoT data-plane API reference names
// "iotdevicegateway" (the name MQTT-over-WebSocket signing uses,
// https://docs.aws.amazon.com/iot/latest/apireference/API_Operations_AWS_IoT_Data_Plane.html)
// and the endpoint accepts both; the vendor signs as the SDKs do, the name
// proven by every SDK call.
const SigningName = "iotdata"

// Publisher publishes through the IoT data-plane REST API
// (POST /topics/{topic}?qos=1), signed with SigV4.
type Publisher struct {
	Config aws.Config
	// Endpoint is the data endpoint: a host name (xxx-ats.iot.REGION.amazonaws.com)
	// or a base URL (https://127.0.0.1:PORT). When empty, Resolve is asked
	// once (DescribeEndpoint iot:Data-ATS).
	Endpoint string
	Resolve  func(ctx context.Context) (string, error)
	Now      func() time.Time

	mu sync.Mutex
}

func (p *Publisher) endpoint(ctx context.Context) (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.Endpoint == "" {
		if p.Resolve == nil {
			return "", fmt.Errorf("no IoT data endpoint: set IOT_DATA_ENDPOINT or allow iot:DescribeEndpoint")
		}
		ep, err := p.Resolve(ctx)
		if err != nil {
			return "", err
		}
		p.Endpoint = ep
	}
	ep := p.Endpoint
	if !strings.Contains(ep, "://") {
		ep = "https://" + ep
	}
	return strings.TrimRight(ep, "/"), nil
}

// Publish implements ports.Publisher.
func (p *Publisher) Publish(ctx context.Context, topic string, payload []byte) error {
	base, err := p.endpoint(ctx)
	if err != nil {
		return err
	}
	u := base + "/topics/" + url.PathEscape(topic) + "?qos=1"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(payload))
	if err != nil {
		return fmt.Errorf("publishing to %s: %w", topic, err)
	}
	req.Header.Set("Content-Type", "application/json")
	if p.Config.Credentials == nil {
		return fmt.Errorf("publishing to %s: no AWS credentials", topic)
	}
	creds, err := p.Config.Credentials.Retrieve(ctx)
	if err != nil {
		return fmt.Errorf("publishing to %s: credentials: %w", topic, err)
	}
	sum := sha256.Sum256(payload)
	now := time.Now
	if p.Now != nil {
		now = p.Now
	}
	if err := v4.NewSigner().SignHTTP(ctx, creds, req, hex.EncodeToString(sum[:]), SigningName, p.Config.Region, now()); err != nil {
		return fmt.Errorf("publishing to %s: signing: %w", topic, err)
	}
	client := p.Config.HTTPClient
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("publishing to %s: %w", topic, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	switch {
	case resp.StatusCode == http.StatusTooManyRequests:
		return fmt.Errorf("publishing to %s: %w (HTTP 429)", topic, ports.ErrThrottled)
	case resp.StatusCode/100 != 2:
		return fmt.Errorf("publishing to %s: HTTP %d: %s", topic, resp.StatusCode, strings.TrimSpace(string(body)))
	}
	return nil
}
