package main

import (
	"bufio"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// client is a minimal MQTT 3.1.1 client (CONNECT, SUBSCRIBE, PUBLISH QoS 1,
// PINGREQ): light enough that thousands of them and the lab share two
// cores, and exact about when CONNACK arrived.
type client struct {
	conn *tls.Conn
	r    *bufio.Reader

	wmu sync.Mutex

	mu       sync.Mutex
	acks     map[uint16]chan struct{}
	received chan string
	nextID   uint16
	closed   chan struct{}
	err      error
}

var errRefused = errors.New("connection refused by the broker")

// dial connects, sends CONNECT and waits for CONNACK.
func dial(addr string, conf *tls.Config, clientID string, keepalive time.Duration) (*client, error) {
	d := &net.Dialer{Timeout: 30 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", addr, conf)
	if err != nil {
		return nil, fmt.Errorf("TLS: %w", err)
	}
	c := &client{conn: conn, r: bufio.NewReaderSize(conn, 512), acks: map[uint16]chan struct{}{}, received: make(chan string, 16), closed: make(chan struct{})}
	var vh []byte
	vh = appendString(vh, "MQTT")
	vh = append(vh, 4, 0x02) // level 4 (3.1.1), clean session
	vh = binary.BigEndian.AppendUint16(vh, uint16(keepalive/time.Second))
	vh = appendString(vh, clientID)
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	if err := c.write(0x10, vh); err != nil {
		conn.Close()
		return nil, err
	}
	typ, body, err := c.read()
	if err != nil {
		conn.Close()
		if errors.Is(err, io.EOF) {
			return nil, errRefused
		}
		return nil, err
	}
	if typ != 0x20 || len(body) != 2 || body[1] != 0 {
		conn.Close()
		return nil, fmt.Errorf("CONNACK %x %x: %w", typ, body, errRefused)
	}
	conn.SetDeadline(time.Time{})
	go c.loop()
	go c.ping(keepalive)
	return c, nil
}

func appendString(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

func (c *client) write(header byte, body []byte) error {
	pkt := []byte{header}
	n := len(body)
	for {
		b := byte(n % 128)
		n /= 128
		if n > 0 {
			b |= 0x80
		}
		pkt = append(pkt, b)
		if n == 0 {
			break
		}
	}
	pkt = append(pkt, body...)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_, err := c.conn.Write(pkt)
	return err
}

func (c *client) read() (byte, []byte, error) {
	h, err := c.r.ReadByte()
	if err != nil {
		return 0, nil, err
	}
	n, mult := 0, 1
	for i := 0; i < 4; i++ {
		b, err := c.r.ReadByte()
		if err != nil {
			return 0, nil, err
		}
		n += int(b&0x7f) * mult
		mult *= 128
		if b&0x80 == 0 {
			break
		}
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(c.r, body); err != nil {
		return 0, nil, err
	}
	return h, body, nil
}

func (c *client) loop() {
	defer close(c.closed)
	for {
		h, body, err := c.read()
		if err != nil {
			c.mu.Lock()
			c.err = err
			c.mu.Unlock()
			return
		}
		switch h & 0xf0 {
		case 0x40, 0x90: // PUBACK, SUBACK
			if len(body) >= 2 {
				id := binary.BigEndian.Uint16(body)
				c.mu.Lock()
				if ch := c.acks[id]; ch != nil {
					close(ch)
					delete(c.acks, id)
				}
				c.mu.Unlock()
			}
		case 0x30: // PUBLISH
			if len(body) < 2 {
				continue
			}
			tl := int(binary.BigEndian.Uint16(body))
			if len(body) < 2+tl {
				continue
			}
			topic := string(body[2 : 2+tl])
			if (h>>1)&3 == 1 && len(body) >= 4+tl {
				c.write(0x40, body[2+tl:4+tl]) // PUBACK
			}
			select {
			case c.received <- topic:
			default:
			}
		}
	}
}

func (c *client) ping(every time.Duration) {
	t := time.NewTicker(every / 2)
	defer t.Stop()
	for {
		select {
		case <-c.closed:
			return
		case <-t.C:
			if c.write(0xc0, nil) != nil {
				return
			}
		}
	}
}

func (c *client) await(build func(id uint16) (byte, []byte)) (chan struct{}, error) {
	c.mu.Lock()
	c.nextID++
	if c.nextID == 0 {
		c.nextID = 1
	}
	id := c.nextID
	ch := make(chan struct{})
	c.acks[id] = ch
	c.mu.Unlock()
	h, body := build(id)
	return ch, c.write(h, body)
}

// subscribe subscribes at QoS 1 and waits for the SUBACK.
func (c *client) subscribe(filter string, timeout time.Duration) error {
	ch, err := c.await(func(id uint16) (byte, []byte) {
		b := binary.BigEndian.AppendUint16(nil, id)
		b = appendString(b, filter)
		return 0x82, append(b, 1)
	})
	if err != nil {
		return err
	}
	return c.wait(ch, timeout, "SUBACK")
}

// publish publishes at QoS 1 and waits for the PUBACK.
func (c *client) publish(topic string, payload []byte, timeout time.Duration) error {
	ch, err := c.await(func(id uint16) (byte, []byte) {
		b := appendString(nil, topic)
		b = binary.BigEndian.AppendUint16(b, id)
		return 0x32, append(b, payload...)
	})
	if err != nil {
		return err
	}
	return c.wait(ch, timeout, "PUBACK")
}

func (c *client) wait(ch chan struct{}, timeout time.Duration, what string) error {
	select {
	case <-ch:
		return nil
	case <-c.closed:
		return fmt.Errorf("connection closed waiting for %s", what)
	case <-time.After(timeout):
		return fmt.Errorf("no %s in %s", what, timeout)
	}
}

func (c *client) alive() bool {
	select {
	case <-c.closed:
		return false
	default:
		return true
	}
}

func (c *client) close() {
	c.write(0xe0, nil) // DISCONNECT
	c.conn.Close()
	<-c.closed
}
