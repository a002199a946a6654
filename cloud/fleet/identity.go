package fleet

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// ErrIdentityKey is wrapped by CheckComputedKeys errors: the event carries a
// key that collides with a field the rule (or AWS) computes.
var ErrIdentityKey = errors.New("event carries a key colliding with a computed identity field")

// VendorComputed are the fields the requests rule adds to a device's message
// (cloud/template.yaml: SELECT *, topic(2) AS thingName, topic(3) AS
// operation, principal() AS principal, clientid() AS clientId, timestamp() AS
// receivedAt). Only the broker vouches for them.
var VendorComputed = []string{"thingName", "operation", "principal", "clientId", "receivedAt"}

// CheckComputedKeys scans the top-level keys of a JSON object and refuses
// any key that equals one of computed ignoring case without being spelled
// exactly like it ("thingname", "ClientID"), and any computed key that
// appears more than once. encoding/json matches object keys to struct fields
// case-insensitively and keeps the last match, so without this check a
// device could add "thingname":"other-device" to its own message and have it
// override the rule's thingName (issue 10, item 8). The error names the key
// and is safe to log (it never includes a value).
func CheckComputedKeys(what string, b []byte, computed ...string) error {
	want := make(map[string]string, len(computed))
	for _, k := range computed {
		want[strings.ToLower(k)] = k
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	tok, err := dec.Token()
	if err != nil {
		return fmt.Errorf("decoding %s: %w", what, err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return fmt.Errorf("decoding %s: not a JSON object", what)
	}
	seen := map[string]int{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return fmt.Errorf("decoding %s: %w", what, err)
		}
		key, ok := tok.(string)
		if !ok {
			return fmt.Errorf("decoding %s: object key is not a string", what)
		}
		if exact, ok := want[strings.ToLower(key)]; ok {
			if key != exact {
				return fmt.Errorf("%w: %s has key %q, which differs from the computed field %q only by case", ErrIdentityKey, what, key, exact)
			}
			if seen[key]++; seen[key] > 1 {
				return fmt.Errorf("%w: %s has the computed field %q more than once", ErrIdentityKey, what, key)
			}
		}
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return fmt.Errorf("decoding %s: value of %q: %w", what, key, err)
		}
	}
	return nil
}
