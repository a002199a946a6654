// Package thingname checks AWS IoT thing names without regexp (bootcertd
// keeps its binary small; manifest.ValidDeviceID is the same rule).
package thingname

import "fmt"

// Valid checks that s can be an AWS IoT thing name (and so an MQTT client ID
// and a certificate CN): 1 to 128 characters of [a-zA-Z0-9:_-].
func Valid(s string) error {
	ok := len(s) >= 1 && len(s) <= 128
	for i := 0; ok && i < len(s); i++ {
		c := s[i]
		ok = c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == ':' || c == '_' || c == '-'
	}
	if !ok {
		return fmt.Errorf("device ID %q is not a valid AWS IoT thing name (1-128 characters of a-z A-Z 0-9 : _ -)", s)
	}
	return nil
}
