package protocol

import "fmt"

// ValidThingName checks that s can be an AWS IoT thing name (and so an MQTT
// client ID, a certificate CN and a factory device ID): 1 to 128 characters
// of [a-zA-Z0-9:_-] (CreateThing's thingName pattern, "[a-zA-Z0-9:_-]+",
// length 1-128, https://docs.aws.amazon.com/iot/latest/apireference/API_CreateThing.html).
// Written without regexp: bootcertd links this and keeps its binary small.
func ValidThingName(s string) error {
	ok := len(s) >= 1 && len(s) <= 128
	for i := 0; ok && i < len(s); i++ {
		c := s[i]
		ok = c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == ':' || c == '_' || c == '-'
	}
	if !ok {
		return fmt.Errorf("%q is not a valid AWS IoT thing name (1-128 characters of a-z A-Z 0-9 : _ -)", s)
	}
	return nil
}
