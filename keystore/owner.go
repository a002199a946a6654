package keystore

import (
	"context"

	"github.com/bootcert/bootcert/internal/atomicfile"
)

// Owner is the user and group that files a backend writes (key files, TPM
// key blobs, the directories it creates for them) are given: on a device the
// daemon's user, so that a key made by root at the factory or by an operator
// can be read by bootcertd (docs/factory.md).
type Owner struct {
	UID, GID int
	// Name is how the owner was given ("bootcert:bootcert"), for reports.
	Name string
}

type ownerKey struct{}

// WithOwner returns a context under which Generate gives the files it writes
// the owner o. Backends that keep keys in hardware only (PKCS#11) ignore it.
func WithOwner(ctx context.Context, o Owner) context.Context {
	return context.WithValue(ctx, ownerKey{}, o)
}

// OwnerFrom returns the owner set by WithOwner.
func OwnerFrom(ctx context.Context) (Owner, bool) {
	o, ok := ctx.Value(ownerKey{}).(Owner)
	return o, ok
}

// FileOptions are the atomicfile options a backend writes a key file with
// under ctx: the owner of WithOwner, if any.
func FileOptions(ctx context.Context) []atomicfile.Option {
	if o, ok := OwnerFrom(ctx); ok {
		return []atomicfile.Option{atomicfile.WithOwner(o.UID, o.GID)}
	}
	return nil
}
