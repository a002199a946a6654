package s3

import (
	"bytes"
	"crypto/md5"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/bootcert/bootcert/internal/clock"
)

// TestGetWhilePutsGrowTheFile: an object read by GET stays intact while
// PUTs grow the database file (each growth remaps bbolt's memory map).
// With s3bolt's own GetObject the object's bytes alias the old mapping
// once its transaction has ended: this read faulted (SIGSEGV) or saw
// other bytes.
func TestGetWhilePutsGrowTheFile(t *testing.T) {
	e := start(t, t.TempDir(), clock.Real{})
	b := e.store.backend
	const bucket = "bootcert-certs"
	want := bytes.Repeat([]byte("certificate "), 200)
	sum := md5.Sum(want)
	if _, err := b.PutObject(bucket, "keep", nil, bytes.NewReader(want), int64(len(want)), nil); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		big := bytes.Repeat([]byte{0xa5}, 64<<10)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := b.PutObject(bucket, fmt.Sprintf("grow-%d", i), nil, bytes.NewReader(big), int64(len(big)), nil); err != nil {
				t.Errorf("put %d: %v", i, err)
				return
			}
		}
	}()
	defer func() { close(stop); wg.Wait() }()
	for i := 0; i < 300; i++ {
		o, err := b.GetObject(bucket, "keep", nil)
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Millisecond) // a PUT may grow the file meanwhile
		got, err := io.ReadAll(o.Contents)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) || !bytes.Equal(o.Hash, sum[:]) {
			t.Fatalf("read %d: the object changed under the reader (%d bytes, hash %x)", i, len(got), o.Hash)
		}
	}
	h, err := b.HeadObject(bucket, "keep")
	if err != nil || h.Size != int64(len(want)) || !bytes.Equal(h.Hash, sum[:]) {
		t.Fatalf("head: %+v %v", h, err)
	}
}
