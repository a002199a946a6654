package keystore

import (
	"context"
	"crypto"
	"errors"
	"strings"
	"testing"
)

type closingBackend struct {
	closed int
	err    error
}

func (*closingBackend) Open(context.Context, *URI) (crypto.Signer, error) { return nil, ErrNotFound }
func (b *closingBackend) CloseAll(context.Context) error                  { b.closed++; return b.err }

// CloseAll reaches every backend that implements Closer and names the
// scheme of one that fails.
func TestCloseAll(t *testing.T) {
	ok, bad := &closingBackend{}, &closingBackend{err: errors.New("logout refused")}
	Register("test-closeall-ok", ok)
	Register("test-closeall-bad", bad)
	t.Cleanup(func() {
		mu.Lock()
		delete(backends, "test-closeall-ok")
		delete(backends, "test-closeall-bad")
		mu.Unlock()
	})
	err := CloseAll(context.Background())
	if ok.closed != 1 || bad.closed != 1 {
		t.Fatalf("closed %d and %d times, want 1 each", ok.closed, bad.closed)
	}
	if err == nil || !strings.Contains(err.Error(), "test-closeall-bad") || !strings.Contains(err.Error(), "logout refused") {
		t.Fatalf("CloseAll = %v, want the failing scheme and its error", err)
	}
}
