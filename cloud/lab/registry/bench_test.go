package registry

import (
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/bootcert/bootcert/internal/clock"
)

// BenchmarkJITRFlow measures the registry side of one device's JITR and
// activation (RegisterPendingCertificate, UpdateCertificate ACTIVE,
// CreateThing, AttachThingPrincipal, AttachPolicy, AddThingToThingGroup with
// a continuous job) with registry.json persisted after every mutation, on a
// registry already holding `existing` devices. Run:
//
//	go test -run '^$' -bench JITRFlow -benchtime 100x ./cloud/lab/registry
func BenchmarkJITRFlow(b *testing.B) {
	for _, existing := range []int{0, 500} {
		for _, mode := range []string{"memory", "sync", "write-behind"} {
			b.Run(fmt.Sprintf("existing=%d/%s", existing, mode), func(b *testing.B) {
				dir := ""
				if mode != "memory" {
					dir = b.TempDir()
				}
				r, err := Open(Config{Dir: dir, Clock: clock.NewFake(t0), WriteBehind: mode == "write-behind"})
				if err != nil {
					b.Fatal(err)
				}
				ca := newCA(b, "factory")
				cac := registerCA(b, r, ca)
				setupRotation(b, r)
				if _, err := r.CreatePolicy("bootcert-bootstrap", `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Connect","Resource":"*"}]}`); err != nil {
					b.Fatal(err)
				}
				ders := make([][]byte, existing+b.N)
				for i := range ders {
					ders[i], _ = ca.issue(b, fmt.Sprintf("gw-%d", i))
				}
				device := func(i int) {
					c, _, err := r.RegisterPendingCertificate(ders[i], cac.ID)
					if err != nil {
						b.Fatal(err)
					}
					name := fmt.Sprintf("gw-%d", i)
					for _, err := range []error{
						r.UpdateCertificate(c.ID, StatusActive),
						func() error { _, err := r.CreateThing(name, "bootcert-gateway", nil); return err }(),
						r.AttachThingPrincipal(name, c.ARN),
						r.AttachPolicy("bootcert-bootstrap", c.ARN),
						r.AddThingToThingGroup("bootcert-rotation", name),
					} {
						if err != nil {
							b.Fatal(err)
						}
					}
				}
				for i := range existing {
					device(i)
				}
				w0 := r.Writes()
				b.ResetTimer()
				for i := range b.N {
					device(existing + i)
				}
				if err := r.Close(); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				b.ReportMetric(float64(r.Writes()-w0)/float64(b.N), "writes/device")
			})
		}
	}
}

// BenchmarkJITRFlowParallel is BenchmarkJITRFlow from 16 goroutines with
// synced writes: concurrent callers share writes (group commit).
func BenchmarkJITRFlowParallel(b *testing.B) {
	r, err := Open(Config{Dir: b.TempDir(), Clock: clock.NewFake(t0)})
	if err != nil {
		b.Fatal(err)
	}
	ca := newCA(b, "factory")
	cac := registerCA(b, r, ca)
	setupRotation(b, r)
	ders := make([][]byte, b.N)
	for i := range ders {
		ders[i], _ = ca.issue(b, fmt.Sprintf("gw-%d", i))
	}
	var next atomic.Int64
	w0 := r.Writes()
	b.SetParallelism(8) // 8 x GOMAXPROCS goroutines
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := int(next.Add(1) - 1)
			c, _, err := r.RegisterPendingCertificate(ders[i], cac.ID)
			if err != nil {
				b.Error(err)
				return
			}
			name := fmt.Sprintf("gw-%d", i)
			_, err = r.CreateThing(name, "bootcert-gateway", nil)
			for _, err := range []error{err, r.UpdateCertificate(c.ID, StatusActive), r.AttachThingPrincipal(name, c.ARN),
				r.AddThingToThingGroup("bootcert-rotation", name)} {
				if err != nil {
					b.Error(err)
				}
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(r.Writes()-w0)/float64(b.N), "writes/device")
}
