package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/bootcert/bootcert/internal/testproxy"
)

// echo is a TCP server that answers the first line it reads.
func echo(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				// the server speaks first, as a TLS server's hello follows
				// the client's: nothing of it may be lost in the CONNECT
				// answer's reading
				io.WriteString(c, "hello\n")
				l, _ := bufio.NewReader(c).ReadString('\n')
				io.WriteString(c, "echo "+l)
			}()
		}
	}()
	return ln.Addr().String()
}

func TestTunnel(t *testing.T) {
	target := echo(t)
	for _, tc := range []struct{ name, auth, url string }{
		{"no-auth", "", "http://%s"},
		{"basic-auth", "gw:s3cret", "http://gw:s3cret@%s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := testproxy.Start(t, tc.auth)
			u, err := Parse(strings.Replace(tc.url, "%s", p.Addr(), 1))
			if err != nil {
				t.Fatal(err)
			}
			c, err := Dialer{URL: u, Timeout: 5 * time.Second}.DialContext(context.Background(), target)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			br := bufio.NewReader(c)
			if l, _ := br.ReadString('\n'); l != "hello\n" {
				t.Fatalf("first line through the tunnel %q", l)
			}
			io.WriteString(c, "ping\n")
			if l, _ := br.ReadString('\n'); l != "echo ping\n" {
				t.Fatalf("reply through the tunnel %q", l)
			}
			if got := p.Targets(); len(got) != 1 || got[0] != target {
				t.Errorf("proxy tunnelled to %v, want [%s]", got, target)
			}
		})
	}
}

func TestRefusedAndUnreachable(t *testing.T) {
	p := testproxy.Start(t, "gw:right")
	u, _ := Parse("http://gw:wrong-secret@" + p.Addr())
	_, err := Dialer{URL: u, Timeout: 5 * time.Second}.DialContext(context.Background(), echo(t))
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "407") {
		t.Fatalf("wrong password: %v, want ErrRefused with 407", err)
	}
	if strings.Contains(err.Error(), "wrong-secret") {
		t.Errorf("the password is in the error: %v", err)
	}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	u, _ = Parse("http://" + addr)
	if _, err := (Dialer{URL: u, Timeout: 2 * time.Second}).DialContext(context.Background(), "127.0.0.1:1"); err == nil || !strings.Contains(err.Error(), "proxy http://"+addr) {
		t.Fatalf("unreachable proxy: %v, want an error naming the proxy", err)
	}
}

func TestParse(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", ""},
		{"http://proxy.example:3128", ""},
		{"http://user:pw@10.0.0.1:8080/", ""},
		{"https://proxy.example:3128", "only http://"},
		{"socks5://proxy.example:1080", "only http://"},
		{"http://proxy.example", "give host and port"},
		{"http://u:topsecret@proxy.example", "give host and port"},
		{"http://proxy.example:3128/path", "no path"},
		{"proxy.example:3128", "scheme"},
	} {
		_, err := Parse(tc.in)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.in, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: %v, want %q", tc.in, err, tc.want)
		case err != nil && strings.Contains(err.Error(), "topsecret"):
			t.Errorf("%s: password in the error: %v", tc.in, err)
		}
	}
}
