package manifest

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// go test -run '^$' -bench Append -benchmem ./manifest
//
// Append rewrites the whole file (atomically, with fsync) under the lock, so
// its cost grows with the manifest size.
func BenchmarkAppend(b *testing.B) {
	for _, existing := range []int{0, 10000, 100000} {
		b.Run(fmt.Sprintf("existing=%d", existing), func(b *testing.B) {
			path := filepath.Join(b.TempDir(), "manifest.csv")
			var sb strings.Builder
			sb.WriteString("device_id,bootstrap_sha256,final_csr\n")
			for i := 0; i < existing; i++ {
				fmt.Fprintf(&sb, "old-%07d,%s,\n", i, fp1)
			}
			if err := os.WriteFile(path, []byte(sb.String()), 0o644); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := Append(path, Entry{DeviceID: fmt.Sprintf("new-%07d", i), BootstrapSHA256: fp1}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
