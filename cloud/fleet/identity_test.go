package fleet_test

import (
	"errors"
	"testing"

	"github.com/bootcert/bootcert/cloud/fleet"
)

func TestCheckComputedKeys(t *testing.T) {
	for _, tc := range []struct {
		name, json string
		wantKey    bool // ErrIdentityKey
		wantErr    bool
	}{
		{"ok/rule-output", `{"csr":"x","thingName":"a","clientId":"a","principal":"p","operation":"get","receivedAt":1}`, false, false},
		{"ok/no-computed", `{"csr":"x","nested":{"thingname":"b"}}`, false, false},
		{"fail/lower-thingname", `{"thingName":"a","thingname":"b"}`, true, true},
		{"fail/upper-clientid", `{"clientId":"a","ClientID":"b"}`, true, true},
		{"fail/variant-alone", `{"THINGNAME":"b"}`, true, true},
		{"fail/duplicate-exact", `{"thingName":"a","thingName":"b"}`, true, true},
		{"fail/not-object", `["thingName"]`, false, true},
		{"fail/truncated", `{"thingName":`, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := fleet.CheckComputedKeys("event", []byte(tc.json), fleet.VendorComputed...)
			if (err != nil) != tc.wantErr || errors.Is(err, fleet.ErrIdentityKey) != tc.wantKey {
				t.Fatalf("err %v, want error %v identity %v", err, tc.wantErr, tc.wantKey)
			}
		})
	}
}
