package daemon

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"strings"

	"github.com/bootcert/bootcert/daemon/config"
	"github.com/bootcert/bootcert/keystore"
)

// checkKeyFiles opens, as this process, the files the configured key URIs
// name (file keys, TPM key blobs, PIN files): a file the daemon's user may
// not read fails --check-config (run by the unit as that user) instead of
// a daemon that retries for ever. A missing file is left to the keystore
// (a key made later, a handle-based key).
func checkKeyFiles(c *config.Config) error {
	for _, k := range []struct{ key, uri string }{
		{"identity.bootstrap_key", c.Identity.BootstrapKey},
		{"identity.preprovisioned_key", c.Identity.PreProvisioned},
	} {
		if k.uri == "" {
			continue
		}
		u, err := keystore.ParseURI(k.uri)
		if err != nil {
			continue // validated by config
		}
		var files []string
		switch u.Scheme {
		case "file":
			files = append(files, u.Opaque)
		case "tpm":
			if b, ok := u.Get("blob"); ok {
				files = append(files, b)
			}
		}
		if src, ok := u.Query["pin-source"]; ok {
			files = append(files, strings.TrimPrefix(src, "file:"))
		}
		for _, f := range files {
			fh, err := os.Open(f)
			if err == nil {
				fh.Close()
				continue
			}
			if errors.Is(err, fs.ErrPermission) {
				who := "this user"
				if me, uerr := user.Current(); uerr == nil {
					who = "user " + me.Username
				}
				return fmt.Errorf("%s %s: %s cannot read %s: %w (give the file to bootcertd's user: chown bootcert:bootcert %s; `bootcertctl check` shows owners and modes)", k.key, u.Redacted(), who, f, err, f)
			}
		}
	}
	return nil
}
