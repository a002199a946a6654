package factory

import (
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/bootcert/bootcert/internal/atomicfile"
	"github.com/bootcert/bootcert/manifest"
)

// identity is what a station commits for one device once its certificate is
// issued: the certificate file, then (optionally) the manifest line.
type identity struct {
	cert    *x509.Certificate
	certOut string
	// overwrite replaces an existing certificate file whose content is
	// previous (re-provisioning with Force); otherwise the file is created
	// and never overwritten.
	overwrite bool
	previous  []byte
	// manifest is the manifest's path; "" records no line (ca sign without
	// --manifest).
	manifest string
	entry    manifest.Entry
	// replace replaces the device's manifest line instead of appending one
	// (which refuses a device already listed).
	replace bool
	// fileOpts are the certificate file's write options (its owner).
	fileOpts []atomicfile.Option
}

// commit is the last step of Provision and Sign: it writes the certificate
// file atomically, then the manifest line, last, so that a device is only
// ever listed with its certificate in place. On error nothing of it stays: a
// created certificate file is removed, a replaced one restored, and the
// manifest is unchanged (manifest.Append and Replace write atomically under
// a lock).
func commit(id identity) error {
	pemCert := EncodeCertificate(id.cert)
	var undo func()
	if id.overwrite {
		if err := atomicfile.WriteFileWith(id.certOut, pemCert, 0o644, id.fileOpts...); err != nil {
			return fmt.Errorf("certificate file %s: %w", id.certOut, err)
		}
		undo = func() { atomicfile.WriteFile(id.certOut, id.previous, 0o644) }
	} else {
		if err := atomicfile.CreateExclusiveWith(id.certOut, pemCert, 0o644, id.fileOpts...); err != nil {
			if errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("certificate file %s appeared meanwhile (another station?); it is never overwritten: %w", id.certOut, err)
			}
			return fmt.Errorf("certificate file %s: %w", id.certOut, err)
		}
		undo = func() { os.Remove(id.certOut) }
	}
	if id.manifest == "" {
		return nil
	}
	var err error
	if id.replace {
		err = manifest.Replace(id.manifest, id.entry)
	} else {
		err = manifest.Append(id.manifest, id.entry)
	}
	if err != nil {
		undo()
		return err
	}
	return nil
}
