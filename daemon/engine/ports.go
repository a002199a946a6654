package engine

import (
	"context"
	"crypto"
	"crypto/rand"
	"math/big"
	"time"

	"github.com/bootcert/bootcert/keystore"
)

// Conn is one connected MQTT session (daemon/session.Session implements it).
type Conn interface {
	Subscribe(ctx context.Context, filter string, h func(topic string, payload []byte)) error
	Publish(ctx context.Context, topic string, payload []byte) error
	// PublishNoWait queues a QoS 1 publish in order without waiting for
	// the PUBACK (job status updates: nothing waits on them).
	PublishNoWait(topic string, payload []byte) error
	Done() <-chan struct{}
	Err() error
	Close(quiesce time.Duration)
}

// Dialer makes one connection attempt with a credential. An error that
// implements Refused() bool and returns true means the broker refused the
// credential (TLS alert, CONNACK refusal, closed during connect).
type Dialer interface {
	Dial(ctx context.Context, cred *Credential) (Conn, error)
}

// Keys creates, opens and destroys keys by URI (keystore.Open/Generate/Delete).
type Keys interface {
	Open(ctx context.Context, uri string) (crypto.Signer, error)
	Generate(ctx context.Context, uri string, alg keystore.Algorithm) (crypto.Signer, error)
	Delete(ctx context.Context, uri string) error
}

// Fetcher downloads a certificate package from a location URL.
type Fetcher interface {
	Fetch(ctx context.Context, url string) ([]byte, error)
}

// KeystoreKeys is Keys over the keystore package.
type KeystoreKeys struct{}

// Open opens a key.
func (KeystoreKeys) Open(ctx context.Context, uri string) (crypto.Signer, error) {
	return keystore.Open(ctx, uri)
}

// Generate makes a key.
func (KeystoreKeys) Generate(ctx context.Context, uri string, alg keystore.Algorithm) (crypto.Signer, error) {
	return keystore.Generate(ctx, uri, alg)
}

// Delete destroys a key.
func (KeystoreKeys) Delete(ctx context.Context, uri string) error { return keystore.Delete(ctx, uri) }

// Backoff is exponential with full jitter and a cap: the n-th delay (n from
// 0) is uniform in [0, min(Max, Initial*2^n)].
type Backoff struct {
	Initial, Max time.Duration
	// Rand returns a uniform value in [0, 1); nil uses crypto/rand.
	Rand func() float64
}

// Delay is the n-th delay.
func (b Backoff) Delay(n int) time.Duration {
	ceil := b.Initial
	for i := 0; i < n && ceil < b.Max; i++ {
		ceil *= 2
	}
	if ceil > b.Max {
		ceil = b.Max
	}
	r := b.Rand
	if r == nil {
		r = cryptoFloat
	}
	return time.Duration(r() * float64(ceil))
}

func cryptoFloat() float64 {
	n, err := rand.Int(rand.Reader, big.NewInt(1<<53))
	if err != nil {
		return 0.5
	}
	return float64(n.Int64()) / float64(1<<53)
}
