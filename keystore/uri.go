package keystore

import (
	"fmt"
	"net/url"
	"sort"
	"strings"
)

// URI names a key. The syntax is that of RFC 7512 for every scheme:
//
//	scheme:attr=value;attr=value?qattr=value&qattr=value
//
// Values are percent-decoded. The "file" scheme is the exception: its
// opaque part is a file path (file:/var/lib/bootcert/keys/op-3.pem).
//
// A URI never prints its secrets: String and Redacted hide pin-value.
type URI struct {
	Scheme string
	// Opaque is the raw part between "scheme:" and "?".
	Opaque string
	// Attrs are the path attributes (before "?"), decoded. Nil for file URIs.
	Attrs map[string]string
	// Query are the query attributes (after "?"), decoded.
	Query map[string]string

	raw string
}

// URIError says which part of a key URI is wrong.
type URIError struct {
	URI    string // redacted
	Part   string // the offending part, e.g. "scheme", "attribute pin-value"
	Reason string
}

func (e *URIError) Error() string {
	return fmt.Sprintf("invalid key URI %q: %s: %s", e.URI, e.Part, e.Reason)
}

// secretAttrs are never printed.
var secretAttrs = map[string]bool{"pin-value": true}

// ParseURI parses a key URI. It checks syntax only; each backend checks the
// attributes it understands with CheckAttrs.
func ParseURI(raw string) (*URI, error) {
	fail := func(part, reason string) (*URI, error) {
		return nil, &URIError{URI: redactRaw(raw), Part: part, Reason: reason}
	}
	if strings.TrimSpace(raw) == "" {
		return fail("uri", "empty")
	}
	scheme, rest, ok := strings.Cut(raw, ":")
	if !ok {
		return fail("scheme", `missing "scheme:" prefix (e.g. tpm:, pkcs11:, file:)`)
	}
	if scheme == "" || !isScheme(scheme) {
		// not echoed: when there is no real scheme this text may hold a
		// secret (pin-value=...) cut at a ':' inside it
		return fail("scheme", "the text before the first ':' is not a scheme (tpm:, pkcs11:, file:)")
	}
	u := &URI{Scheme: strings.ToLower(scheme), raw: raw}
	opaque, query, hasQuery := strings.Cut(rest, "?")
	u.Opaque = opaque
	if u.Scheme == "file" {
		p, err := url.PathUnescape(opaque)
		if err != nil {
			return fail("path", err.Error())
		}
		p = strings.TrimPrefix(p, "//") // tolerate file:///abs/path
		if p == "" {
			return fail("path", "empty file path")
		}
		u.Opaque = p
	} else {
		attrs, err := parseAttrs(opaque, ";")
		if err != nil {
			return fail("path attributes", err.Error())
		}
		u.Attrs = attrs
	}
	if hasQuery {
		q, err := parseAttrs(query, "&")
		if err != nil {
			return fail("query attributes", err.Error())
		}
		u.Query = q
		for k := range q {
			if _, dup := u.Attrs[k]; dup {
				return fail("attribute "+k, "given both in the path and in the query")
			}
		}
	} else {
		u.Query = map[string]string{}
	}
	return u, nil
}

func isScheme(s string) bool {
	for i, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z':
		case i > 0 && (r >= '0' && r <= '9' || r == '+' || r == '-' || r == '.'):
		default:
			return false
		}
	}
	return true
}

func parseAttrs(s, sep string) (map[string]string, error) {
	m := map[string]string{}
	if s == "" {
		return m, nil
	}
	for _, kv := range strings.Split(s, sep) {
		if kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("%q is not name=value", redactKV(kv))
		}
		dv, err := url.PathUnescape(v)
		if err != nil {
			return nil, fmt.Errorf("attribute %s: bad percent-encoding", k)
		}
		if old, dup := m[k]; dup && old != dv {
			return nil, fmt.Errorf("attribute %s given twice with different values", k)
		}
		m[k] = dv
	}
	return m, nil
}

// CheckAttrs rejects attributes a backend does not understand, naming them.
func (u *URI) CheckAttrs(path, query []string) error {
	allowed := func(list []string, k string) bool {
		for _, a := range list {
			if a == k {
				return true
			}
		}
		return false
	}
	for _, k := range sortedKeys(u.Attrs) {
		if !allowed(path, k) {
			return &URIError{URI: u.Redacted(), Part: "attribute " + k, Reason: fmt.Sprintf("unknown for %s: URIs (known: %s)", u.Scheme, strings.Join(path, ", "))}
		}
	}
	for _, k := range sortedKeys(u.Query) {
		if !allowed(query, k) {
			return &URIError{URI: u.Redacted(), Part: "query attribute " + k, Reason: fmt.Sprintf("unknown for %s: URIs (known: %s)", u.Scheme, strings.Join(query, ", "))}
		}
	}
	return nil
}

// Error builds a URIError for this URI.
func (u *URI) Error(part, reason string) error {
	return &URIError{URI: u.Redacted(), Part: part, Reason: reason}
}

// Get returns a path or query attribute.
func (u *URI) Get(name string) (string, bool) {
	if v, ok := u.Attrs[name]; ok {
		return v, true
	}
	v, ok := u.Query[name]
	return v, ok
}

// Raw is the URI as given, secrets included. Never log it.
func (u *URI) Raw() string { return u.raw }

// String is the redacted URI, safe to print.
func (u *URI) String() string { return u.Redacted() }

// Redacted returns the URI with secret attribute values replaced by "***".
func (u *URI) Redacted() string { return redactRaw(u.raw) }

// redactRaw hides secret attribute values. It splits raw the way ParseURI
// does (scheme, path attributes on ";", query attributes on "&" after the
// first "?"), so that a secret containing ";" or "?" is hidden whole. It
// accepts any input, including URIs that do not parse.
func redactRaw(raw string) string {
	var b strings.Builder
	rest := raw
	if scheme, r, ok := strings.Cut(raw, ":"); ok && isScheme(scheme) {
		b.WriteString(scheme + ":")
		rest = r
	}
	path, query, hasQuery := strings.Cut(rest, "?")
	if strings.EqualFold(raw[:len(raw)-len(rest)], "file:") {
		b.WriteString(path) // a file path has no attributes
	} else {
		redactList(&b, path, ";")
	}
	if hasQuery {
		b.WriteByte('?')
		redactList(&b, query, "&")
	}
	return b.String()
}

func redactList(b *strings.Builder, s, sep string) {
	for i, kv := range strings.Split(s, sep) {
		if i > 0 {
			b.WriteString(sep)
		}
		b.WriteString(redactKV(kv))
	}
}

func redactKV(kv string) string {
	k, _, ok := strings.Cut(kv, "=")
	// the first segment may carry the scheme ("pkcs11:pin-value=...")
	name := k
	if i := strings.LastIndex(name, ":"); i >= 0 {
		name = name[i+1:]
	}
	if ok && secretAttrs[strings.ToLower(name)] {
		return k + "=***"
	}
	return kv
}

func sortedKeys(m map[string]string) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
