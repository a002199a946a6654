package attest_test

import (
	"github.com/bootcert/bootcert/attest"
	"github.com/bootcert/bootcert/manifest"
)

func manifestEntry(r *attest.Record) manifest.Entry {
	return manifest.Entry{DeviceID: "gw-1", Attestation: r.Manifest()}
}
