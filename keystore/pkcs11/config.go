package pkcs11

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/bootcert/bootcert/keystore"
)

// Scheme is the URI scheme of this backend.
const Scheme = "pkcs11"

// ModuleEnv names the environment variable that supplies module-path when a
// URI has none.
const ModuleEnv = "BOOTCERT_PKCS11_MODULE"

// Sentinel errors, wrapped with the token, module or key they concern.
var (
	// ErrNotBuilt is returned by every call of a binary built with
	// CGO_ENABLED=0.
	ErrNotBuilt = errors.New("bootcert was built without PKCS#11 support (CGO_ENABLED=0); rebuild with cgo to use pkcs11: URIs")
	// ErrPINRejected means the token refused the user PIN.
	ErrPINRejected = errors.New("the token rejected the PIN")
	// ErrModuleNotFound means the PKCS#11 module file does not exist or
	// cannot be loaded.
	ErrModuleNotFound = errors.New("PKCS#11 module not found")
	// ErrTokenNotFound means no slot holds a token with the label (or slot
	// id) of the URI.
	ErrTokenNotFound = errors.New("PKCS#11 token not found")
	// ErrAmbiguous means several key pairs match the URI (labels are not
	// unique); add id= to select one.
	ErrAmbiguous = errors.New("several keys match")
)

// Path and query attributes understood in pkcs11: URIs (RFC 7512 names).
var (
	pathAttrs  = []string{"token", "object", "id", "slot-id", "type"}
	queryAttrs = []string{"module-path", "pin-source", "pin-value"}
)

// config is what a pkcs11: URI says, checked.
type config struct {
	module string
	token  string // token label, "" when selected by slot-id only
	slot   *int
	label  []byte // CKA_LABEL of the key, may be empty
	id     []byte // CKA_ID of the key, may be empty
	pin    string
	// pinFrom says where the PIN came from, for error messages: never the PIN.
	pinFrom string
	uri     string // redacted
}

// cacheKey identifies one crypto11 context: one module, one token. A token
// named by its label (with or without a matching slot-id) is one context; a
// token named by slot-id only is another, so refer to a token the same way
// everywhere in a process.
func (c *config) cacheKey() string {
	if c.token != "" {
		return c.module + "\x00label\x00" + c.token
	}
	return c.module + "\x00slot\x00" + strconv.Itoa(*c.slot)
}

func (c *config) pinHash() [32]byte { return sha256.Sum256([]byte("bootcert-pin\x00" + c.pin)) }

// tokenName names the token in messages.
func (c *config) tokenName() string {
	switch {
	case c.token != "" && c.slot != nil:
		return fmt.Sprintf("%q (slot %d)", c.token, *c.slot)
	case c.token != "":
		return strconv.Quote(c.token)
	default:
		return fmt.Sprintf("in slot %d", *c.slot)
	}
}

// keyName names the key in messages.
func (c *config) keyName() string {
	var parts []string
	if len(c.label) > 0 {
		parts = append(parts, fmt.Sprintf("object=%q", c.label))
	}
	if len(c.id) > 0 {
		parts = append(parts, fmt.Sprintf("id=%x", c.id))
	}
	return strings.Join(parts, " ")
}

// parseConfig checks a pkcs11: URI and reads its PIN. needKey says whether
// object or id is required (it always is for keys).
func parseConfig(u *keystore.URI) (*config, error) {
	if u.Scheme != Scheme {
		return nil, u.Error("scheme", fmt.Sprintf("the pkcs11 backend handles pkcs11: URIs, not %s:", u.Scheme))
	}
	for _, q := range queryAttrs {
		if _, ok := u.Attrs[q]; ok {
			return nil, u.Error("attribute "+q, "is a query attribute: put it after '?' (pkcs11:token=...;object=...?"+q+"=...)")
		}
	}
	for _, a := range pathAttrs {
		if _, ok := u.Query[a]; ok {
			return nil, u.Error("query attribute "+a, "is a path attribute: put it before '?' (pkcs11:"+a+"=...;...?module-path=...)")
		}
	}
	if err := u.CheckAttrs(pathAttrs, queryAttrs); err != nil {
		return nil, err
	}
	c := &config{uri: u.Redacted()}
	c.token = u.Attrs["token"]
	if s, ok := u.Attrs["slot-id"]; ok {
		n, err := strconv.ParseUint(s, 10, 32)
		if err == nil && uint64(int(n)) != n {
			err = strconv.ErrRange // 32-bit platforms
		}
		if err != nil {
			return nil, u.Error("attribute slot-id", fmt.Sprintf("%q is not a decimal slot number", s))
		}
		i := int(n)
		c.slot = &i
	}
	if c.token == "" && c.slot == nil {
		return nil, u.Error("attribute token", "missing: name the token by its label (token=...) or its slot (slot-id=...)")
	}
	if t, ok := u.Attrs["type"]; ok && t != "private" {
		return nil, u.Error("attribute type", fmt.Sprintf("%q: a key URI names a private key (type=private, or leave type out)", t))
	}
	c.label = []byte(u.Attrs["object"])
	c.id = []byte(u.Attrs["id"])
	if len(c.label) == 0 && len(c.id) == 0 {
		return nil, u.Error("attribute object", "missing: name the key by its label (object=...) and/or its id (id=%01%02...)")
	}

	c.module = u.Query["module-path"]
	moduleFrom := "query attribute module-path"
	if c.module == "" {
		c.module = os.Getenv(ModuleEnv)
		moduleFrom = "environment variable " + ModuleEnv
	}
	if c.module == "" {
		return nil, u.Error("query attribute module-path", "missing: give ?module-path=/path/to/module.so or set "+ModuleEnv)
	}
	if !filepath.IsAbs(c.module) {
		return nil, u.Error(moduleFrom, fmt.Sprintf("%q is not an absolute path", c.module))
	}

	src, hasSrc := u.Query["pin-source"]
	val, hasVal := u.Query["pin-value"]
	switch {
	case hasSrc && hasVal:
		return nil, u.Error("query attribute pin-value", "conflicts with pin-source: give one of them")
	case hasVal:
		if val == "" {
			return nil, u.Error("query attribute pin-value", "empty")
		}
		c.pin, c.pinFrom = val, "pin-value"
	case hasSrc:
		p, ok := strings.CutPrefix(src, "file:")
		p = strings.TrimPrefix(p, "//")
		if !ok && !strings.HasPrefix(src, "/") {
			return nil, u.Error("query attribute pin-source", fmt.Sprintf("%q: use file:/path/to/pin-file", src))
		}
		if !filepath.IsAbs(p) {
			return nil, u.Error("query attribute pin-source", fmt.Sprintf("%q is not an absolute path", p))
		}
		pin, err := readPIN(p)
		if err != nil {
			return nil, err
		}
		c.pin, c.pinFrom = pin, "pin-source file "+p
	default:
		return nil, u.Error("query attribute pin-source", "missing: give ?pin-source=file:/path/to/pin-file (or pin-value= in tests)")
	}
	return c, nil
}

// readPIN reads a PIN file, trimming one trailing newline. Errors name the
// file, never its content.
func readPIN(p string) (string, error) {
	st, err := os.Stat(p)
	if err != nil {
		return "", fmt.Errorf("reading PIN file %s: %w", p, err)
	}
	if !st.Mode().IsRegular() {
		return "", fmt.Errorf("reading PIN file %s: not a regular file", p)
	}
	if st.Size() > 4096 {
		return "", fmt.Errorf("reading PIN file %s: %d bytes is too long for a PIN", p, st.Size())
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return "", fmt.Errorf("reading PIN file %s: %w", p, err)
	}
	pin := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
	if pin == "" {
		return "", fmt.Errorf("reading PIN file %s: the file is empty", p)
	}
	return pin, nil
}
