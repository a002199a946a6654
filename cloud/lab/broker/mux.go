package broker

import (
	"bufio"
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"time"
)

// AWS IoT Core's device data endpoint (iot:Data-ATS) serves MQTT and the
// HTTPS data plane (POST /topics/...) on one host. The lab's MQTT port does
// the same: after the TLS handshake the first byte tells an MQTT CONNECT
// (0x10) from an HTTP request, which goes to Config.DataPlane.

// handshakeTimeout bounds the TLS handshake and the wait for the first byte.
const handshakeTimeout = 15 * time.Second

// muxListener accepts TLS connections and sorts them into MQTT and HTTPS.
type muxListener struct {
	inner   net.Listener
	conf    *tls.Config
	mqtt    *chanListener
	http    *chanListener // nil without a data-plane handler
	done    chan struct{}
	closeMu sync.Once
}

func newMux(inner net.Listener, conf *tls.Config, withHTTP bool) *muxListener {
	m := &muxListener{inner: inner, conf: conf, done: make(chan struct{})}
	m.mqtt = &chanListener{addr: inner.Addr(), ch: make(chan net.Conn), done: m.done, close: m.Close}
	if withHTTP {
		m.http = &chanListener{addr: inner.Addr(), ch: make(chan net.Conn), done: m.done, close: m.Close}
	}
	go m.loop()
	return m
}

func (m *muxListener) loop() {
	for {
		c, err := m.inner.Accept()
		if err != nil {
			select {
			case <-m.done:
				return
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(5 * time.Millisecond)
				continue
			}
			m.Close()
			return
		}
		go m.classify(c)
	}
}

func (m *muxListener) classify(c net.Conn) {
	tc := tls.Server(c, m.conf)
	tc.SetDeadline(time.Now().Add(handshakeTimeout))
	if err := tc.Handshake(); err != nil {
		tc.Close()
		return
	}
	br := bufio.NewReaderSize(tc, 1024)
	first, err := br.Peek(1)
	if err != nil {
		tc.Close()
		return
	}
	tc.SetDeadline(time.Time{})
	pc := &peekConn{Conn: tc, r: br}
	target := m.mqtt
	if first[0] != 0x10 { // not an MQTT CONNECT: HTTPS
		if m.http == nil {
			tc.Close()
			return
		}
		target = m.http
	}
	select {
	case target.ch <- pc:
	case <-m.done:
		tc.Close()
	}
}

// Close stops accepting; connections already handed out stay open.
func (m *muxListener) Close() error {
	var err error
	m.closeMu.Do(func() {
		close(m.done)
		err = m.inner.Close()
	})
	return err
}

// peekConn is a TLS connection whose first bytes were peeked.
type peekConn struct {
	*tls.Conn
	r *bufio.Reader
}

func (p *peekConn) Read(b []byte) (int, error) { return p.r.Read(b) }

// chanListener is a net.Listener fed by the mux.
type chanListener struct {
	addr  net.Addr
	ch    chan net.Conn
	done  chan struct{}
	close func() error
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error   { return l.close() }
func (l *chanListener) Addr() net.Addr { return l.addr }
