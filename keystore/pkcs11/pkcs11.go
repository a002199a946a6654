//go:build cgo

package pkcs11

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sort"
	"strings"
	"sync"

	"github.com/ThalesGroup/crypto11"
	p11 "github.com/miekg/pkcs11"

	"github.com/bootcert/bootcert/keystore"
)

// Backend implements keystore.Backend, Generator, Deleter and Describer for
// pkcs11: URIs.
type Backend struct{}

func init() { keystore.Register(Scheme, Backend{}) }

var (
	_ keystore.Backend   = Backend{}
	_ keystore.Generator = Backend{}
	_ keystore.Deleter   = Backend{}
	_ keystore.Describer = Backend{}
)

// token is one cached crypto11 context: one module, one token, logged in.
type token struct {
	ctx     *crypto11.Context
	pinHash [32]byte
	// mu serialises check-then-act sequences (Generate's existence check,
	// Delete) within this process: they hold it for writing. Lookups and
	// signatures hold it for reading, because SoftHSM2's file object store
	// fails (CKR_GENERAL_ERROR) when objects are created while other
	// sessions read (softhsm/SoftHSMv2#573). crypto11 itself is safe for
	// concurrent use.
	mu sync.RWMutex
	// keepsLoaded: the module is tpm2-pkcs11 (see flushLoaded); module and
	// slot are then where to log out.
	keepsLoaded bool
	module      string
	slot        uint
}

var (
	tokensMu sync.Mutex
	tokens   = map[string]*token{}
)

// CloseAll closes every cached token context and unloads the modules.
// Signers obtained before stop working. For tests and orderly shutdown.
func CloseAll() error {
	tokensMu.Lock()
	defer tokensMu.Unlock()
	var errs []error
	for k, t := range tokens {
		errs = append(errs, t.logoutBeforeClose(), t.ctx.Close())
		delete(tokens, k)
	}
	return errors.Join(errs...)
}

// CloseAll is keystore.Closer: keystore.CloseAll closes the cached token
// contexts through it.
func (Backend) CloseAll(context.Context) error { return CloseAll() }

// open returns the cached context for the URI's module and token, logging in
// on first use.
func open(c *config) (*token, error) {
	tokensMu.Lock()
	defer tokensMu.Unlock()
	if err := checkModule(c.module); err != nil {
		return nil, err
	}
	if c.slot != nil && c.token != "" {
		// checked on every open: the cache is keyed by label
		if err := checkSlotLabel(c); err != nil {
			return nil, err
		}
	}
	if t, ok := tokens[c.cacheKey()]; ok {
		if t.pinHash != c.pinHash() {
			return nil, fmt.Errorf("token %s (module %s) is already open in this process with a different PIN (from %s); restart the process to use a new PIN", c.tokenName(), c.module, c.pinFrom)
		}
		return t, nil
	}
	cfg := &crypto11.Config{Path: c.module, Pin: c.pin}
	if c.slot != nil {
		s := *c.slot
		cfg.SlotNumber = &s
	} else {
		cfg.TokenLabel = c.token
	}
	ctx, err := crypto11.Configure(cfg)
	if err != nil {
		return nil, configureError(c, err)
	}
	t := &token{ctx: ctx, pinHash: c.pinHash(), module: c.module}
	if keepsKeysLoaded(c.module) {
		if t.slot, err = slotID(c); err != nil {
			ctx.Close()
			return nil, fmt.Errorf("opening token %s with module %s: %w", c.tokenName(), c.module, err)
		}
		t.keepsLoaded = true
	}
	tokens[c.cacheKey()] = t
	return t, nil
}

func checkModule(module string) error {
	st, err := os.Stat(module)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%w: %s does not exist (install the module or fix module-path)", ErrModuleNotFound, module)
		}
		return fmt.Errorf("%w: %s: %v", ErrModuleNotFound, module, err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%w: %s is not a regular file", ErrModuleNotFound, module)
	}
	return nil
}

func configureError(c *config, err error) error {
	var perr p11.Error
	if errors.As(err, &perr) {
		switch perr {
		case p11.CKR_PIN_INCORRECT, p11.CKR_PIN_INVALID, p11.CKR_PIN_LEN_RANGE:
			return fmt.Errorf("logging in to token %s: %w (PIN from %s; %s): check the PIN", c.tokenName(), ErrPINRejected, c.pinFrom, perr.Error())
		case p11.CKR_PIN_LOCKED:
			return fmt.Errorf("logging in to token %s: %w: the user PIN is locked (too many wrong PINs); reset it with the SO PIN", c.tokenName(), ErrPINRejected)
		case p11.CKR_PIN_EXPIRED:
			return fmt.Errorf("logging in to token %s: %w: the user PIN has expired; set a new one", c.tokenName(), ErrPINRejected)
		case p11.CKR_USER_PIN_NOT_INITIALIZED:
			return fmt.Errorf("logging in to token %s: the user PIN is not initialised; run `pkcs11-tool --module %s --init-pin`", c.tokenName(), c.module)
		}
		return fmt.Errorf("opening token %s with module %s: %w", c.tokenName(), c.module, err)
	}
	msg := err.Error()
	switch {
	case strings.Contains(msg, "could not find PKCS#11 token"):
		avail := listTokens(c.module)
		return fmt.Errorf("%w: no token %s in module %s (available: %s)", ErrTokenNotFound, c.tokenName(), c.module, avail)
	case strings.Contains(msg, "failed to open module"):
		return fmt.Errorf("%w: %s cannot be loaded as a PKCS#11 module", ErrModuleNotFound, c.module)
	}
	return fmt.Errorf("opening token %s with module %s: %w", c.tokenName(), c.module, err)
}

// checkSlotLabel verifies that slot-id and token agree when both are given.
func checkSlotLabel(c *config) error {
	slots, err := slotLabels(c.module)
	if err != nil {
		return fmt.Errorf("opening token %s with module %s: %w", c.tokenName(), c.module, err)
	}
	label, ok := slots[uint(*c.slot)]
	if !ok {
		return fmt.Errorf("%w: no token in slot %d of module %s (available: %s)", ErrTokenNotFound, *c.slot, c.module, formatSlots(slots))
	}
	if label != c.token {
		return &keystore.URIError{URI: c.uri, Part: "attribute slot-id", Reason: fmt.Sprintf("slot %d holds token %q, not %q: the URI's token and slot-id conflict", *c.slot, label, c.token)}
	}
	return nil
}

// slotLabels lists the token labels by slot with the raw module. When a
// crypto11 context already holds the module initialised it is reused as is
// and not finalised.
func slotLabels(module string) (map[uint]string, error) {
	out := map[uint]string{}
	err := withModule(module, func(m *p11.Ctx) error {
		slots, err := m.GetSlotList(true)
		if err != nil {
			return err
		}
		for _, s := range slots {
			ti, err := m.GetTokenInfo(s)
			if err != nil || ti.Flags&p11.CKF_TOKEN_INITIALIZED == 0 {
				continue
			}
			out[s] = strings.TrimRight(ti.Label, " \x00")
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func listTokens(module string) string {
	slots, err := slotLabels(module)
	if err != nil {
		return "could not list: " + err.Error()
	}
	return formatSlots(slots)
}

func formatSlots(slots map[uint]string) string {
	if len(slots) == 0 {
		return "none"
	}
	var ids []uint
	for s := range slots {
		ids = append(ids, s)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	var parts []string
	for _, s := range ids {
		parts = append(parts, fmt.Sprintf("%q in slot %d", slots[s], s))
	}
	return strings.Join(parts, ", ")
}

// signer is a key pair on a token.
type signer struct {
	crypto11.Signer
	tok  *token
	name string
	cfg  *config // to log in again (Close on tpm2-pkcs11)
}

// Close releases what the key holds in the token. On tpm2-pkcs11 (see
// flushLoaded) that is a TPM object slot, which only a logout frees: Close
// logs the token out and in again, unloading every key this process had
// loaded; keys still in use load again on their next signature. Other
// modules hold nothing per key: Close does nothing.
func (s *signer) Close() error {
	if !s.tok.keepsLoaded {
		return nil
	}
	s.tok.mu.Lock()
	defer s.tok.mu.Unlock()
	return s.tok.flushLoaded(s.cfg)
}

// Sign signs with the token-resident private key.
func (s *signer) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	s.tok.mu.RLock()
	sig, err := s.Signer.Sign(r, digest, opts)
	s.tok.mu.RUnlock()
	if err != nil {
		return nil, fmt.Errorf("signing with PKCS#11 key %s: %w", s.name, err)
	}
	return sig, nil
}

func (c *config) findPairs(t *token) ([]crypto11.Signer, error) {
	pairs, err := t.ctx.FindKeyPairs(c.id, c.label)
	if err != nil {
		return nil, fmt.Errorf("searching token %s for key %s: %w", c.tokenName(), c.keyName(), err)
	}
	return pairs, nil
}

func (c *config) findOne(t *token) (crypto11.Signer, error) {
	pairs, err := c.findPairs(t)
	if err != nil {
		return nil, err
	}
	switch len(pairs) {
	case 0:
		return nil, fmt.Errorf("key %s on token %s: %w", c.keyName(), c.tokenName(), keystore.ErrNotFound)
	case 1:
		return pairs[0], nil
	}
	return nil, fmt.Errorf("key %s on token %s: %w (%d key pairs); add id= to the URI to pick one", c.keyName(), c.tokenName(), ErrAmbiguous, len(pairs))
}

// Open finds the key pair named by object (CKA_LABEL) and/or id (CKA_ID).
func (Backend) Open(_ context.Context, u *keystore.URI) (crypto.Signer, error) {
	c, err := parseConfig(u)
	if err != nil {
		return nil, err
	}
	t, err := open(c)
	if err != nil {
		return nil, err
	}
	t.mu.RLock()
	k, err := c.findOne(t)
	t.mu.RUnlock()
	if err != nil {
		return nil, err
	}
	return &signer{Signer: k, tok: t, name: c.keyName(), cfg: c}, nil
}

// Generate creates a key pair inside the token: token object, private,
// sensitive, never extractable, sign only. It refuses when a private key
// with the same label or id exists. Without id= it picks a random 16-byte
// CKA_ID; the key is then found by its label.
func (Backend) Generate(_ context.Context, u *keystore.URI, alg keystore.Algorithm) (crypto.Signer, error) {
	c, err := parseConfig(u)
	if err != nil {
		return nil, err
	}
	if err := alg.Validate(); err != nil {
		return nil, err
	}
	t, err := open(c)
	if err != nil {
		return nil, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	// Labels are not unique in PKCS#11: check both label and id first.
	if len(c.label) > 0 {
		if err := c.refuseExisting(t, nil, c.label, fmt.Sprintf("object=%q", c.label)); err != nil {
			return nil, err
		}
	}
	id := c.id
	if len(id) > 0 {
		if err := c.refuseExisting(t, id, nil, fmt.Sprintf("id=%x", id)); err != nil {
			return nil, err
		}
	} else {
		id = make([]byte, 16)
		if _, err := rand.Read(id); err != nil {
			return nil, err
		}
	}
	pub, priv, err := templates(id, c.label)
	if err != nil {
		return nil, err
	}
	// tpm2-pkcs11 without a resource manager: make room for the new key
	if err := t.flushLoaded(c); err != nil {
		return nil, fmt.Errorf("generating %s key %s: %w", alg, c.keyName(), err)
	}
	var k crypto11.Signer
	if alg.IsRSA() {
		_ = pub.Set(crypto11.CkaEncrypt, false)
		_ = priv.Set(crypto11.CkaDecrypt, false)
		k, err = t.ctx.GenerateRSAKeyPairWithAttributes(pub, priv, alg.Bits())
	} else {
		k, err = t.ctx.GenerateECDSAKeyPairWithAttributes(pub, priv, alg.Curve())
	}
	if err != nil {
		var perr p11.Error
		if errors.As(err, &perr) && (perr == p11.CKR_MECHANISM_INVALID || perr == p11.CKR_KEY_SIZE_RANGE || perr == p11.CKR_DOMAIN_PARAMS_INVALID || perr == p11.CKR_CURVE_NOT_SUPPORTED) {
			return nil, fmt.Errorf("generating %s key %s on token %s: %w: the token refused it (%v); choose another algorithm", alg, c.keyName(), c.tokenName(), keystore.ErrUnsupportedAlgorithm, err)
		}
		return nil, fmt.Errorf("generating %s key %s on token %s: %w", alg, c.keyName(), c.tokenName(), err)
	}
	// Trust but verify: a token that ignored the template must not hand out
	// an extractable key as if it were protected.
	attrs, err := readAttrs(t, k)
	if err == nil && (!attrs["sensitive"] || attrs["extractable"] || !attrs["token"] || !attrs["private"]) {
		_ = k.Delete()
		return nil, fmt.Errorf("generating %s key %s on token %s: the token did not apply the requested protection (attributes %v); key deleted", alg, c.keyName(), c.tokenName(), attrs)
	}
	// tpm2-pkcs11 leaves the new key and its public part loaded: unload
	// them, so that the key it replaces can still be loaded (a rollback)
	if err := t.flushLoaded(c); err != nil {
		return nil, fmt.Errorf("generating %s key %s: %w", alg, c.keyName(), err)
	}
	return &signer{Signer: k, tok: t, name: c.keyName(), cfg: c}, nil
}

func (c *config) refuseExisting(t *token, id, label []byte, what string) error {
	keys, err := t.ctx.FindPrivateKeys(id, label)
	if err != nil {
		return fmt.Errorf("searching token %s for %s: %w", c.tokenName(), what, err)
	}
	if len(keys) > 0 {
		return fmt.Errorf("a private key with %s already exists on token %s: %w; delete it first or choose another name", what, c.tokenName(), keystore.ErrExists)
	}
	return nil
}

func templates(id, label []byte) (pub, priv crypto11.AttributeSet, err error) {
	pub = crypto11.NewAttributeSet()
	priv = crypto11.NewAttributeSet()
	for _, a := range []struct {
		set crypto11.AttributeSet
		typ crypto11.AttributeType
		val any
	}{
		{pub, crypto11.CkaId, id},
		{pub, crypto11.CkaToken, true},
		{pub, crypto11.CkaPrivate, false},
		{pub, crypto11.CkaVerify, true},
		{priv, crypto11.CkaId, id},
		{priv, crypto11.CkaToken, true},
		{priv, crypto11.CkaPrivate, true},
		{priv, crypto11.CkaSensitive, true},
		{priv, crypto11.CkaExtractable, false},
		{priv, crypto11.CkaSign, true},
	} {
		if err := a.set.Set(a.typ, a.val); err != nil {
			return nil, nil, err
		}
	}
	if len(label) > 0 {
		_ = pub.Set(crypto11.CkaLabel, label)
		_ = priv.Set(crypto11.CkaLabel, label)
	}
	return pub, priv, nil
}

// attribute names reported by Describe, and their PKCS#11 types.
var describeAttrs = []struct {
	name string
	typ  crypto11.AttributeType
}{
	{"token", crypto11.CkaToken},
	{"private", crypto11.CkaPrivate},
	{"sensitive", crypto11.CkaSensitive},
	{"extractable", crypto11.CkaExtractable},
	{"neverExtractable", crypto11.CkaNeverExtractable},
	{"alwaysSensitive", crypto11.CkaAlwaysSensitive},
	{"local", crypto11.CkaLocal},
}

func readAttrs(t *token, k crypto11.Signer) (map[string]bool, error) {
	var types []crypto11.AttributeType
	for _, a := range describeAttrs {
		types = append(types, a.typ)
	}
	set, err := t.ctx.GetAttributes(k, types)
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for _, a := range describeAttrs {
		if v, ok := set[a.typ]; ok && v != nil {
			out[a.name] = len(v.Value) > 0 && !bytes.Equal(v.Value, []byte{0})
		}
	}
	return out, nil
}

// Describe reports the key's algorithm, fingerprint and PKCS#11 protection
// attributes. Hardware = sensitive && !extractable && neverExtractable.
func (Backend) Describe(_ context.Context, u *keystore.URI) (keystore.Info, error) {
	c, err := parseConfig(u)
	if err != nil {
		return keystore.Info{}, err
	}
	t, err := open(c)
	if err != nil {
		return keystore.Info{}, err
	}
	t.mu.RLock()
	defer t.mu.RUnlock()
	k, err := c.findOne(t)
	if err != nil {
		return keystore.Info{}, err
	}
	info, err := keystore.DescribePublic(k.Public())
	if err != nil {
		return keystore.Info{}, fmt.Errorf("key %s on token %s: %w", c.keyName(), c.tokenName(), err)
	}
	attrs, err := readAttrs(t, k)
	if err != nil {
		return keystore.Info{}, fmt.Errorf("reading attributes of key %s on token %s: %w", c.keyName(), c.tokenName(), err)
	}
	info.URI = u.Redacted()
	info.Backend = Scheme
	info.Attributes = attrs
	info.Hardware = attrs["sensitive"] && !attrs["extractable"] && attrs["neverExtractable"]
	return info, nil
}

// Delete destroys the key pair (private and public objects). It refuses
// when several key pairs match.
func (Backend) Delete(_ context.Context, u *keystore.URI) error {
	c, err := parseConfig(u)
	if err != nil {
		return err
	}
	t, err := open(c)
	if err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	k, err := c.findOne(t)
	if err != nil {
		return err
	}
	// tpm2-pkcs11 would leak the slot of a loaded key it destroys
	if err := t.flushLoaded(c); err != nil {
		return fmt.Errorf("deleting key %s: %w", c.keyName(), err)
	}
	if err := k.Delete(); err != nil {
		return fmt.Errorf("deleting key %s on token %s: %w", c.keyName(), c.tokenName(), err)
	}
	return nil
}
