package session

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// The MQTT 3.1.1 packets bootcertd uses (OASIS MQTT 3.1.1, section 3). It is
// a client of one broker with a clean session, QoS 0 and 1 only: CONNECT,
// PUBLISH, PUBACK, SUBSCRIBE, UNSUBSCRIBE, PINGREQ and DISCONNECT out;
// CONNACK, PUBLISH, PUBACK, SUBACK, UNSUBACK and PINGRESP in.
const (
	pktConnect     = 1
	pktConnack     = 2
	pktPublish     = 3
	pktPuback      = 4
	pktSubscribe   = 8
	pktSuback      = 9
	pktUnsubscribe = 10
	pktUnsuback    = 11
	pktPingreq     = 12
	pktPingresp    = 13
	pktDisconnect  = 14
)

// maxPacket bounds an incoming packet (AWS IoT Core's limit is 128 KiB).
const maxPacket = 1 << 20

// packet is one control packet: the first byte's type and flags, and the
// rest after the remaining length.
type packet struct {
	typ, flags byte
	body       []byte
}

func (p packet) encode() []byte {
	out := []byte{p.typ<<4 | p.flags}
	n := len(p.body)
	for {
		b := byte(n % 128)
		n /= 128
		if n > 0 {
			b |= 0x80
		}
		out = append(out, b)
		if n == 0 {
			break
		}
	}
	return append(out, p.body...)
}

var errMalformed = errors.New("malformed MQTT packet")

func readPacket(r *bufio.Reader) (packet, error) {
	b, err := r.ReadByte()
	if err != nil {
		return packet{}, err
	}
	n, mult := 0, 1
	for i := 0; ; i++ {
		if i == 4 {
			return packet{}, fmt.Errorf("%w: remaining length longer than 4 bytes", errMalformed)
		}
		c, err := r.ReadByte()
		if err != nil {
			return packet{}, noEOF(err)
		}
		n += int(c&0x7f) * mult
		mult *= 128
		if c&0x80 == 0 {
			break
		}
	}
	if n > maxPacket {
		return packet{}, fmt.Errorf("%w: %d bytes (limit %d)", errMalformed, n, maxPacket)
	}
	p := packet{typ: b >> 4, flags: b & 0x0f, body: make([]byte, n)}
	if _, err := io.ReadFull(r, p.body); err != nil {
		return packet{}, noEOF(err)
	}
	return p, nil
}

// noEOF: a connection that ends inside a packet ended unexpectedly.
func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

func appendString(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

func connectPacket(clientID string, keepAlive uint16) packet {
	body := appendString(nil, "MQTT")
	body = append(body, 4, 0x02) // level 3.1.1, clean session
	body = binary.BigEndian.AppendUint16(body, keepAlive)
	return packet{typ: pktConnect, body: appendString(body, clientID)}
}

func publishPacket(topic string, id uint16, payload []byte) packet {
	body := appendString(nil, topic)
	body = binary.BigEndian.AppendUint16(body, id)
	return packet{typ: pktPublish, flags: 1 << 1, body: append(body, payload...)} // QoS 1
}

func subscribePacket(id uint16, filter string) packet {
	body := binary.BigEndian.AppendUint16(nil, id)
	return packet{typ: pktSubscribe, flags: 2, body: append(appendString(body, filter), 1)}
}

func unsubscribePacket(id uint16, filter string) packet {
	return packet{typ: pktUnsubscribe, flags: 2, body: appendString(binary.BigEndian.AppendUint16(nil, id), filter)}
}

func pubackPacket(id uint16) packet {
	return packet{typ: pktPuback, body: binary.BigEndian.AppendUint16(nil, id)}
}

// parsePublish splits an incoming PUBLISH into topic, packet id (0 for QoS
// 0) and payload.
func parsePublish(p packet) (topic string, qos byte, id uint16, payload []byte, err error) {
	qos = p.flags >> 1 & 3
	b := p.body
	if len(b) < 2 || len(b) < 2+int(binary.BigEndian.Uint16(b)) {
		return "", 0, 0, nil, fmt.Errorf("%w: PUBLISH topic", errMalformed)
	}
	n := int(binary.BigEndian.Uint16(b))
	topic, b = string(b[2:2+n]), b[2+n:]
	switch qos {
	case 0:
	case 1:
		if len(b) < 2 {
			return "", 0, 0, nil, fmt.Errorf("%w: PUBLISH packet id", errMalformed)
		}
		id, b = binary.BigEndian.Uint16(b), b[2:]
	default:
		return "", 0, 0, nil, fmt.Errorf("%w: PUBLISH with QoS %d (only 0 and 1 are subscribed to)", errMalformed, qos)
	}
	return topic, qos, id, b, nil
}

// matches reports whether an MQTT topic filter (with + and # wildcards)
// matches a topic name.
func matches(filter, topic string) bool {
	for {
		f, frest, fmore := cut(filter)
		t, trest, tmore := cut(topic)
		switch {
		case f == "#":
			return true
		case f != "+" && f != t:
			return false
		case !fmore || !tmore:
			// "a/#" matches "a" too
			return fmore == tmore || (fmore && frest == "#")
		}
		filter, topic = frest, trest
	}
}

func cut(s string) (first, rest string, more bool) {
	for i := 0; i < len(s); i++ {
		if s[i] == '/' {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}
