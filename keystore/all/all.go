// Package all links every keystore backend into a binary. Import it for its
// side effects:
//
//	import _ "github.com/bootcert/bootcert/keystore/all"
package all

import (
	_ "github.com/bootcert/bootcert/keystore/file"
	_ "github.com/bootcert/bootcert/keystore/pkcs11"
	_ "github.com/bootcert/bootcert/keystore/tpm"
)
