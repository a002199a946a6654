package manifest

import (
	"bytes"
	"encoding/csv"
	"strings"
	"testing"
)

// FuzzParse feeds arbitrary bytes to Parse: it must not panic, and whatever
// it accepts must round-trip through Entry.Record.
func FuzzParse(f *testing.F) {
	seeds := []string{
		"device_id,bootstrap_sha256,final_csr\n",
		"device_id,bootstrap_sha256,final_csr\ngw-1,,\n",
		"device_id,bootstrap_sha256,final_csr\ngw-1," + fp1 + ",AQID\ngw-2,,\n",
		"\ufeffdevice_id\r\ngw-1\r\n",
		"device_id,bootstrap_sha256,final_csr\ngw-1,,\ngw-1,,\n",
		"device_id,bootstrap_sha256,final_csr\n\"gw,1\",,\n",
		"device_id,bootstrap_sha256,final_csr\ngw-1,zz,\n",
		"device_id,bootstrap_sha256,final_csr\ngw-1,,!!!\n",
		"device_id,bootstrap_sha256,final_csr\ngw-1,,,extra\n",
		"",
		"\"unterminated",
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		l, err := Parse(bytes.NewReader(data))
		if err != nil {
			if l != nil {
				t.Fatal("list returned with an error")
			}
			return
		}
		var buf bytes.Buffer
		w := csv.NewWriter(&buf)
		w.Write(Header)
		for _, e := range l.Entries() {
			if err := ValidDeviceID(e.DeviceID); err != nil {
				t.Fatalf("accepted invalid device ID: %v", err)
			}
			w.Write(e.Record())
		}
		w.Flush()
		l2, err := Parse(&buf)
		if err != nil {
			t.Fatalf("re-parsing what was accepted: %v\n%s", err, strings.TrimSpace(buf.String()))
		}
		if l2.Len() != l.Len() {
			t.Fatalf("round trip: %d devices, then %d", l.Len(), l2.Len())
		}
		for _, e := range l.Entries() {
			e2, ok := l2.Lookup(e.DeviceID)
			if !ok || e2.BootstrapSHA256 != e.BootstrapSHA256 || !bytes.Equal(e2.FinalCSR, e.FinalCSR) {
				t.Fatalf("round trip changed %s", e.DeviceID)
			}
		}
	})
}
