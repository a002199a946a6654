package iam

import "sync"

// Principal is an identity the lab authenticates by access key: a
// function's execution role, or the --credentials key pair.
type Principal struct {
	Name            string // for logs: the function's logical ID, "credentials"
	ARN             string // e.g. arn:aws:sts::ACCOUNT:assumed-role/ROLE/FUNCTION
	AccessKeyID     string
	SecretAccessKey string
	// Policies are the identity policies; Admin allows everything without
	// them (the --credentials key pair without a policy).
	Policies []*Document
	Admin    bool
}

// Authorize decides req for p.
func (p *Principal) Authorize(req Request) Decision {
	if p.Admin {
		return Decision{Allowed: true, Reason: "administrator"}
	}
	return Evaluate(p.Policies, req)
}

// Keyring finds principals by access key ID. Safe for concurrent use.
type Keyring struct {
	mu   sync.RWMutex
	keys map[string]*Principal
}

// Add adds (or replaces) a principal.
func (k *Keyring) Add(p *Principal) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.keys == nil {
		k.keys = map[string]*Principal{}
	}
	k.keys[p.AccessKeyID] = p
}

// Lookup returns the principal of an access key ID.
func (k *Keyring) Lookup(accessKeyID string) (*Principal, bool) {
	if k == nil {
		return nil, false
	}
	k.mu.RLock()
	defer k.mu.RUnlock()
	p, ok := k.keys[accessKeyID]
	return p, ok
}
