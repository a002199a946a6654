//go:build cgo

package pkcs11

import (
	"errors"
	"fmt"
	"strings"

	p11 "github.com/miekg/pkcs11"
)

// tpm2-pkcs11 loads a key into the TPM the first time it is used (sign, or
// C_GenerateKeyPair's CreateLoaded) and keeps it loaded until C_Logout, the
// only call that flushes its objects: C_DestroyObject frees a loaded key's
// record without TPM2_FlushContext, and C_Finalize flushes nothing. Without
// a resource manager (swtpm, a bare /dev/tpm0) the TPM has only a few
// transient object slots (swtpm: 3), so a long-running process that has
// used two keys cannot create a third (TPM_RC_OBJECT_MEMORY), a destroyed
// key leaks its slot for good, and so does every key a process used before
// it exited. flushLoaded logs the token out and in again, which flushes
// every key this process loaded; they are loaded again on their next use.
// tpm2-pkcs11 keeps object handles valid across logout, so signers opened
// before keep working (other modules may invalidate private-object handles
// at logout: flushLoaded does nothing for them).

// keepsKeysLoaded reports whether the module is tpm2-pkcs11.
func keepsKeysLoaded(module string) bool {
	var manufacturer string
	_ = withModule(module, func(m *p11.Ctx) error {
		info, err := m.GetInfo()
		if err != nil {
			return err
		}
		manufacturer = info.ManufacturerID
		return nil
	})
	return strings.HasPrefix(strings.TrimSpace(manufacturer), "tpm2-software")
}

// withModule runs f with a raw handle on the module. When a crypto11
// context already holds the module initialised it is reused as is and not
// finalised.
func withModule(module string, f func(m *p11.Ctx) error) error {
	m := p11.New(module)
	if m == nil {
		return fmt.Errorf("%w: %s cannot be loaded as a PKCS#11 module", ErrModuleNotFound, module)
	}
	defer m.Destroy()
	err := m.Initialize()
	switch {
	case err == nil:
		defer m.Finalize()
	case errors.Is(err, p11.Error(p11.CKR_CRYPTOKI_ALREADY_INITIALIZED)):
	default:
		return err
	}
	return f(m)
}

// flushLoaded empties the TPM of the keys tpm2-pkcs11 loaded for this
// process (C_Logout then C_Login on a session of its own). The caller holds
// t.mu for writing: no signature may run while the token is logged out. On
// a failed login the token's context is dropped from the cache, so that the
// next open logs in afresh.
func (t *token) flushLoaded(c *config) error {
	if !t.keepsLoaded {
		return nil
	}
	err := withModule(c.module, func(m *p11.Ctx) error {
		s, err := t.logout(m)
		if err != nil {
			return err
		}
		defer m.CloseSession(s)
		if err := m.Login(s, p11.CKU_USER, c.pin); err != nil && !errors.Is(err, p11.Error(p11.CKR_USER_ALREADY_LOGGED_IN)) {
			tokensMu.Lock()
			if tokens[c.cacheKey()] == t {
				delete(tokens, c.cacheKey())
			}
			tokensMu.Unlock()
			return fmt.Errorf("login again (PIN from %s): %w", c.pinFrom, err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("flushing the keys loaded in the TPM by token %s (module %s): %w", c.tokenName(), c.module, err)
	}
	return nil
}

// logout logs the token out on a new session of m, which it returns open.
func (t *token) logout(m *p11.Ctx) (p11.SessionHandle, error) {
	s, err := m.OpenSession(t.slot, p11.CKF_SERIAL_SESSION|p11.CKF_RW_SESSION)
	if err != nil {
		return 0, fmt.Errorf("opening a session on slot %d: %w", t.slot, err)
	}
	if err := m.Logout(s); err != nil && !errors.Is(err, p11.Error(p11.CKR_USER_NOT_LOGGED_IN)) {
		m.CloseSession(s)
		return 0, fmt.Errorf("logout: %w", err)
	}
	return s, nil
}

// logoutBeforeClose flushes the keys tpm2-pkcs11 loaded before the context
// is closed (C_Finalize would leave them in the TPM).
func (t *token) logoutBeforeClose() error {
	if !t.keepsLoaded {
		return nil
	}
	return withModule(t.module, func(m *p11.Ctx) error {
		s, err := t.logout(m)
		if err == nil {
			m.CloseSession(s)
		}
		return err
	})
}

// slotID is the slot of the token, from the URI's slot-id or its label.
func slotID(c *config) (uint, error) {
	if c.slot != nil {
		return uint(*c.slot), nil
	}
	slots, err := slotLabels(c.module)
	if err != nil {
		return 0, err
	}
	for s, label := range slots {
		if label == c.token {
			return s, nil
		}
	}
	return 0, fmt.Errorf("%w: no token %s in module %s (available: %s)", ErrTokenNotFound, c.tokenName(), c.module, formatSlots(slots))
}
