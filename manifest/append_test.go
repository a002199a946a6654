package manifest

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
)

const fp1 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func TestAppendCreatesWithHeaderOnce(t *testing.T) {
	path := filepath.Join(t.TempDir(), "manifest.csv")
	if err := Append(path, Entry{DeviceID: "gw-1", BootstrapSHA256: fp1}); err != nil {
		t.Fatal(err)
	}
	if err := Append(path, Entry{DeviceID: "gw-2", FinalCSR: []byte{1, 2, 3}}); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(path)
	want := "device_id,bootstrap_sha256,final_csr\ngw-1," + fp1 + ",\ngw-2,,AQID\n"
	if string(got) != want {
		t.Fatalf("manifest:\n%s\nwant:\n%s", got, want)
	}
	l, err := ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if e, ok := l.Lookup("gw-2"); !ok || !bytes.Equal(e.FinalCSR, []byte{1, 2, 3}) {
		t.Fatalf("gw-2 = %+v, %v", e, ok)
	}
}

func TestAppendKeepsExistingLines(t *testing.T) {
	path := filepath.Join(t.TempDir(), "manifest.csv")
	// hand-written file: two-column header, no final newline
	orig := "device_id,bootstrap_sha256\nold-1,\nold-2," + fp1
	if err := os.WriteFile(path, []byte(orig), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := Append(path, Entry{DeviceID: "new-1"}); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(path)
	if want := orig + "\nnew-1,,\n"; string(got) != want {
		t.Fatalf("got %q want %q", got, want)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o640 {
		t.Fatalf("mode changed to %v", st.Mode())
	}
	if _, err := ReadFile(path); err != nil {
		t.Fatal(err)
	}
}

func TestAppendErrors(t *testing.T) {
	dir := t.TempDir()
	valid := "device_id,bootstrap_sha256,final_csr\ngw-1," + fp1 + ",\n"
	tests := []struct {
		name    string
		content string // "" = no file
		entry   Entry
		is      error
		msg     string
	}{
		{name: "fail/duplicate", content: valid, entry: Entry{DeviceID: "gw-1"}, is: ErrDuplicate, msg: "--force"},
		{name: "fail/invalid-id", content: valid, entry: Entry{DeviceID: "bad/id"}, msg: "not a valid AWS IoT thing name"},
		{name: "fail/bad-fingerprint", content: valid, entry: Entry{DeviceID: "gw-2", BootstrapSHA256: "XYZ"}, msg: "64 lower-hex"},
		{name: "fail/corrupt-manifest", content: "device_id,x\n", entry: Entry{DeviceID: "gw-2"}, msg: "the manifest is invalid"},
		{name: "fail/corrupt-line", content: valid + "bad id,,\n", entry: Entry{DeviceID: "gw-2"}, msg: "line 3"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, strconv.Itoa(i)+".csv")
			if tt.content != "" {
				os.WriteFile(path, []byte(tt.content), 0o644)
			}
			err := Append(path, tt.entry)
			if err == nil {
				t.Fatal("Append succeeded")
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("error %v is not %v", err, tt.is)
			}
			if !strings.Contains(err.Error(), tt.msg) || !strings.Contains(err.Error(), path) {
				t.Errorf("error %q should mention %q and the file", err, tt.msg)
			}
			got, rerr := os.ReadFile(path)
			if tt.content == "" {
				if !errors.Is(rerr, fs.ErrNotExist) {
					t.Errorf("file created on error")
				}
			} else if string(got) != tt.content {
				t.Errorf("file changed on error: %q", got)
			}
		})
	}
}

func TestReplace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "manifest.csv")
	for _, id := range []string{"a", "b", "c"} {
		if err := Append(path, Entry{DeviceID: id}); err != nil {
			t.Fatal(err)
		}
	}
	if err := Replace(path, Entry{DeviceID: "b", BootstrapSHA256: fp1}); err != nil {
		t.Fatal(err)
	}
	if err := Replace(path, Entry{DeviceID: "d"}); err != nil { // not listed: appended
		t.Fatal(err)
	}
	got, _ := os.ReadFile(path)
	want := "device_id,bootstrap_sha256,final_csr\na,,\nb," + fp1 + ",\nc,,\nd,,\n"
	if string(got) != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
}

func TestAppendConcurrentGoroutines(t *testing.T) {
	path := filepath.Join(t.TempDir(), "manifest.csv")
	const n = 64
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- Append(path, Entry{DeviceID: fmt.Sprintf("gw-%03d", i)})
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	checkAll(t, path, n, "gw-%03d")
}

// TestAppendConcurrentProcesses runs this test binary several times as
// helper processes that append at once, as stations sharing a manifest do.
func TestAppendConcurrentProcesses(t *testing.T) {
	path := filepath.Join(t.TempDir(), "manifest.csv")
	const procs, each = 4, 25
	var cmds []*exec.Cmd
	var outs []*bytes.Buffer
	for p := 0; p < procs; p++ {
		cmd := exec.Command(os.Args[0], "-test.count=1")
		cmd.Env = append(os.Environ(), "MANIFEST_HELPER_PATH="+path, "MANIFEST_HELPER_PREFIX=st"+strconv.Itoa(p), "MANIFEST_HELPER_N="+strconv.Itoa(each))
		out := &bytes.Buffer{}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, cmd)
		outs = append(outs, out)
	}
	for i, c := range cmds {
		if err := c.Wait(); err != nil {
			t.Fatalf("helper %d: %v\n%s", i, err, outs[i])
		}
	}
	l := checkAll(t, path, procs*each, "")
	for p := 0; p < procs; p++ {
		for i := 0; i < each; i++ {
			if _, ok := l.Lookup(fmt.Sprintf("st%d-%03d", p, i)); !ok {
				t.Errorf("st%d-%03d lost", p, i)
			}
		}
	}
}

// TestMain turns the test binary into an appending station when
// TestAppendConcurrentProcesses starts it with MANIFEST_HELPER_PATH set.
func TestMain(m *testing.M) {
	path := os.Getenv("MANIFEST_HELPER_PATH")
	if path == "" {
		os.Exit(m.Run())
	}
	n, _ := strconv.Atoi(os.Getenv("MANIFEST_HELPER_N"))
	prefix := os.Getenv("MANIFEST_HELPER_PREFIX")
	for i := 0; i < n; i++ {
		if err := Append(path, Entry{DeviceID: fmt.Sprintf("%s-%03d", prefix, i)}); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	os.Exit(0)
}

func checkAll(t *testing.T, path string, n int, format string) *List {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if c := strings.Count(string(data), "device_id,"); c != 1 {
		t.Fatalf("header appears %d times", c)
	}
	if lines := strings.Count(string(data), "\n"); lines != n+1 {
		t.Fatalf("%d lines, want %d", lines, n+1)
	}
	l, err := Parse(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if l.Len() != n {
		t.Fatalf("%d devices, want %d", l.Len(), n)
	}
	if format != "" {
		for i := 0; i < n; i++ {
			if _, ok := l.Lookup(fmt.Sprintf(format, i)); !ok {
				t.Errorf("%s lost", fmt.Sprintf(format, i))
			}
		}
	}
	return l
}
