package s3

import (
	"bytes"
	"fmt"
	"io"
	"time"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3bolt"
	bolt "go.etcd.io/bbolt"
	"gopkg.in/mgo.v2/bson"
)

// boltBackend is gofakes3's bbolt backend with a GetObject (and so
// HeadObject) that copies the stored object out of its read transaction.
// s3bolt decodes the object with mgo's bson, whose []byte fields alias
// the bytes they were decoded from, here bbolt's memory map; the object's
// contents and hash are used after the transaction has ended, when a
// concurrent PUT that grows the file may have remapped it. A storm test
// crashed the lab that way (SIGSEGV in gofakes3's
// writeGetOrHeadObjectResponse, hex-encoding the hash of a downloaded
// certificate); bbolt documents that values "are only valid while the
// transaction is open" (go.etcd.io/bbolt, Bucket.Get).
type boltBackend struct {
	*s3bolt.Backend
	db *bolt.DB
}

// storedObject is how s3bolt stores an object (its boltObject: bson's
// default field names are the lowercased Go names).
type storedObject struct {
	Name         string
	Metadata     map[string]string
	LastModified time.Time
	Size         int64
	Contents     []byte
	Hash         []byte
}

func (b *boltBackend) GetObject(bucket, name string, rangeRequest *gofakes3.ObjectRangeRequest) (*gofakes3.Object, error) {
	var raw []byte
	err := b.db.View(func(tx *bolt.Tx) error {
		bk := tx.Bucket([]byte(bucket))
		if bk == nil {
			return gofakes3.BucketNotFound(bucket)
		}
		v := bk.Get([]byte(name))
		if v == nil {
			return gofakes3.KeyNotFound(name)
		}
		raw = bytes.Clone(v)
		return nil
	})
	if err != nil {
		return nil, err
	}
	var o storedObject
	if err := bson.Unmarshal(raw, &o); err != nil {
		return nil, fmt.Errorf("lab s3: decoding object %s/%s: %w", bucket, name, err)
	}
	rng, err := rangeRequest.Range(o.Size)
	if err != nil {
		return nil, err
	}
	data := o.Contents
	if rng != nil {
		data = data[rng.Start : rng.Start+rng.Length]
	}
	return &gofakes3.Object{Name: name, Metadata: o.Metadata, Size: o.Size, Contents: io.NopCloser(bytes.NewReader(data)), Range: rng, Hash: o.Hash}, nil
}

func (b *boltBackend) HeadObject(bucket, name string) (*gofakes3.Object, error) {
	o, err := b.GetObject(bucket, name, nil)
	if err != nil {
		return nil, err
	}
	o.Contents = io.NopCloser(bytes.NewReader(nil))
	return o, nil
}
