package template

import "testing"

func BenchmarkLoadLabTemplate(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Load(labTemplate, Options{}); err != nil {
			b.Fatal(err)
		}
	}
}
