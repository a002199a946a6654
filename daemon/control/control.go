// Package control is bootcertd's local control socket: a Unix stream socket
// (mode 0660) speaking newline-delimited JSON. One request a line:
//
//	{"op":"status"}  -> one Status line
//	{"op":"watch"}   -> a Status line now and at every change
//	{"op":"rotate"}  -> {"ok":true}: look for pending jobs now
//
// Errors come back as {"error":"..."}.
package control

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// DefaultSocket is the packaged control socket path.
const DefaultSocket = "/run/bootcert/control.sock"

// Engine is what the socket exposes (the rotation engine).
type Engine interface {
	Status() Status
	Watch() (<-chan Status, func())
	RotateNow()
}

// Request is one request line.
type Request struct {
	Op string `json:"op"`
}

// Reply is one reply line: a status, an ack or an error.
type Reply struct {
	Status *Status `json:"status,omitempty"`
	OK     bool    `json:"ok,omitempty"`
	Error  string  `json:"error,omitempty"`
}

// Server serves the control socket.
type Server struct {
	ln   net.Listener
	eng  Engine
	log  *slog.Logger
	wg   sync.WaitGroup
	mu   sync.Mutex
	cs   map[net.Conn]struct{}
	quit chan struct{}
}

// Listen creates the socket at path with mode 0660, replacing a stale one.
func Listen(path string, eng Engine, log *slog.Logger) (*Server, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("control socket %s: exists and is not a socket; remove it or change control.socket", path)
		}
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil, fmt.Errorf("control socket %s: another bootcertd is listening", path)
		}
		os.Remove(path)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	s := &Server{ln: ln, eng: eng, log: log, cs: map[net.Conn]struct{}{}, quit: make(chan struct{})}
	s.wg.Add(1)
	go s.accept()
	return s, nil
}

func (s *Server) accept() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.cs[c] = struct{}{}
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.serve(c)
			s.mu.Lock()
			delete(s.cs, c)
			s.mu.Unlock()
			c.Close()
		}()
	}
}

func (s *Server) serve(c net.Conn) {
	r := bufio.NewReader(&limited{c: c})
	enc := json.NewEncoder(c)
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			return
		}
		var req Request
		if err := json.Unmarshal(line, &req); err != nil {
			enc.Encode(Reply{Error: "bad request: " + err.Error()})
			continue
		}
		switch req.Op {
		case "status":
			st := s.eng.Status()
			enc.Encode(Reply{Status: &st})
		case "rotate":
			s.eng.RotateNow()
			enc.Encode(Reply{OK: true})
		case "watch":
			ch, cancel := s.eng.Watch()
			st := s.eng.Status()
			if enc.Encode(Reply{Status: &st}) != nil {
				cancel()
				return
			}
			gone := make(chan struct{})
			go func() { io.Copy(io.Discard, r); close(gone) }()
			defer cancel()
			for {
				select {
				case st := <-ch:
					if enc.Encode(Reply{Status: &st}) != nil {
						return
					}
				case <-gone:
					return
				case <-s.quit:
					return
				}
			}
		default:
			enc.Encode(Reply{Error: fmt.Sprintf("unknown op %q (status, watch, rotate)", req.Op)})
		}
	}
}

// limited caps what one connection may send at 64 KiB in all (a request
// line is a few bytes), so a client cannot grow the daemon's memory.
type limited struct {
	c net.Conn
	n int
}

func (l *limited) Read(p []byte) (int, error) {
	if l.n > maxInput {
		return 0, errors.New("too much input")
	}
	n, err := l.c.Read(p)
	l.n += n
	return n, err
}

// maxInput is how much one connection may send.
const maxInput = 64 << 10

// Close stops the server and removes the socket.
func (s *Server) Close() error {
	err := s.ln.Close()
	close(s.quit)
	s.mu.Lock()
	for c := range s.cs {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return err
}

// Client talks to a control socket.
type Client struct {
	Path    string
	Timeout time.Duration
}

func (c *Client) dial(ctx context.Context) (net.Conn, error) {
	d := net.Dialer{Timeout: c.timeout()}
	conn, err := d.DialContext(ctx, "unix", c.Path)
	if err != nil {
		hint := "is bootcertd running? (systemctl status bootcertd)"
		if errors.Is(err, fs.ErrPermission) {
			hint = "run as root or as a member of the bootcert group"
		}
		return nil, fmt.Errorf("connecting to bootcertd at %s: %w (%s)", c.Path, err, hint)
	}
	return conn, nil
}

func (c *Client) timeout() time.Duration {
	if c.Timeout <= 0 {
		return 5 * time.Second
	}
	return c.Timeout
}

func (c *Client) call(ctx context.Context, op string) (Reply, error) {
	conn, err := c.dial(ctx)
	if err != nil {
		return Reply{}, err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(c.timeout()))
	if err := json.NewEncoder(conn).Encode(Request{Op: op}); err != nil {
		return Reply{}, fmt.Errorf("control socket %s: %w", c.Path, err)
	}
	var r Reply
	if err := json.NewDecoder(bufio.NewReader(conn)).Decode(&r); err != nil {
		return Reply{}, fmt.Errorf("control socket %s: reading reply: %w", c.Path, err)
	}
	if r.Error != "" {
		return r, fmt.Errorf("bootcertd: %s", r.Error)
	}
	return r, nil
}

// Status asks for the daemon's status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	r, err := c.call(ctx, "status")
	if err != nil {
		return Status{}, err
	}
	if r.Status == nil {
		return Status{}, fmt.Errorf("control socket %s: reply without status", c.Path)
	}
	return *r.Status, nil
}

// Rotate asks the daemon to look for pending jobs now.
func (c *Client) Rotate(ctx context.Context) error {
	_, err := c.call(ctx, "rotate")
	return err
}

// Watch calls f with every status until ctx ends or f returns an error.
func (c *Client) Watch(ctx context.Context, f func(Status) error) error {
	conn, err := c.dial(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	go func() { <-ctx.Done(); conn.Close() }()
	if err := json.NewEncoder(conn).Encode(Request{Op: "watch"}); err != nil {
		return err
	}
	dec := json.NewDecoder(bufio.NewReader(conn))
	for {
		var r Reply
		if err := dec.Decode(&r); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("control socket %s: %w", c.Path, err)
		}
		if r.Status != nil {
			if err := f(*r.Status); err != nil {
				return err
			}
		}
	}
}
