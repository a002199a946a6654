// Package manifest reads and appends the factory manifest, which is also the
// cloud's allow list: a CSV file with the header
//
//	device_id,bootstrap_sha256,final_csr
//
// bootstrap_sha256 (optional) is the lower-hex SHA-256 of the bootstrap
// certificate's DER, which is also its AWS IoT certificateId. final_csr
// (optional) is the base64 standard-encoded DER of the operational key's CSR,
// present for devices provisioned in pre-provisioned mode.
//
// Four optional columns record a TPM's attestation enrolment (docs/attestation.md):
//
//	ek_cert_sha256,ek_pub_sha256,ak_public,ak_name
//
// ek_cert_sha256 is the lower-hex SHA-256 of the EK certificate's DER (empty
// for a TPM without one), ek_pub_sha256 that of the EK's DER
// SubjectPublicKeyInfo, ak_public the base64 TPMT_PUBLIC of the attestation
// key, ak_name its lower-hex TPM name. A manifest without them (the
// three-column header) parses as before, and a file is written with the
// three-column header until a line needs the attestation columns.
package manifest

import (
	"encoding/base64"
	"encoding/csv"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/bootcert/bootcert/protocol"
)

// Header is the manifest's first line (in full; files without
// attestation columns carry its first three fields).
var Header = []string{"device_id", "bootstrap_sha256", "final_csr", "ek_cert_sha256", "ek_pub_sha256", "ak_public", "ak_name"}

// baseColumns is the number of columns before the attestation ones.
const baseColumns = 3

// Entry is one device.
type Entry struct {
	DeviceID        string
	BootstrapSHA256 string // lower hex, may be empty
	FinalCSR        []byte // DER, nil when absent
	// Attestation is the device's TPM enrolment, nil when not attested.
	Attestation *Attestation
}

// Attestation is a TPM attestation enrolment (package attest's Record).
type Attestation struct {
	EKCertSHA256 string // lower hex, empty when the TPM has no EK certificate
	EKPubSHA256  string // lower hex
	AKPublic     []byte // TPMT_PUBLIC
	AKName       []byte // nameAlg || digest
}

// List is a parsed manifest.
type List struct {
	byID  map[string]Entry
	order []string
	width int // columns in the header
}

// ErrDuplicate is returned when a device ID appears twice.
var ErrDuplicate = errors.New("device listed twice")

// ParseError names the line and column of a bad manifest entry.
type ParseError struct {
	Line   int
	Column string
	Err    error
}

func (e *ParseError) Error() string {
	if e.Column == "" {
		return fmt.Sprintf("manifest line %d: %v", e.Line, e.Err)
	}
	return fmt.Sprintf("manifest line %d, column %s: %v", e.Line, e.Column, e.Err)
}

func (e *ParseError) Unwrap() error { return e.Err }

// MaxSize bounds what Parse reads (64 MiB: some millions of devices).
const MaxSize = 64 << 20

// Parse reads a manifest. Every error names the line (and column) at fault.
func Parse(r io.Reader) (*List, error) {
	cr := csv.NewReader(io.LimitReader(r, MaxSize))
	cr.FieldsPerRecord = -1
	cr.ReuseRecord = true
	l := &List{byID: map[string]Entry{}}
	first := true
	for {
		rec, err := cr.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			// FieldPos panics after a failed Read; the csv error has the line.
			line := 0
			var pe *csv.ParseError
			if errors.As(err, &pe) {
				line = pe.Line
			}
			return nil, &ParseError{Line: line, Err: err}
		}
		line, _ := cr.FieldPos(0)
		if first {
			first = false
			if err := checkHeader(rec); err != nil {
				return nil, &ParseError{Line: line, Err: err}
			}
			l.width = len(rec)
			continue
		}
		if len(rec) == 1 && strings.TrimSpace(rec[0]) == "" {
			continue
		}
		if limit := max(l.width, baseColumns); len(rec) > limit {
			return nil, &ParseError{Line: line, Err: fmt.Errorf("%d fields, at most %d expected (%s)", len(rec), limit, strings.Join(Header[:limit], ","))}
		}
		e, perr := parseRecord(rec)
		if perr != nil {
			perr.Line = line
			return nil, perr
		}
		if _, dup := l.byID[e.DeviceID]; dup {
			return nil, &ParseError{Line: line, Column: "device_id", Err: fmt.Errorf("%w: %s", ErrDuplicate, e.DeviceID)}
		}
		l.byID[e.DeviceID] = e
		l.order = append(l.order, e.DeviceID)
	}
	if first {
		return nil, &ParseError{Line: 1, Err: errors.New("empty manifest: the header line " + strings.Join(Header, ",") + " is missing")}
	}
	return l, nil
}

func checkHeader(rec []string) error {
	if len(rec) == 0 || len(rec) > len(Header) {
		return fmt.Errorf("header must be %q", strings.Join(Header, ","))
	}
	for i, f := range rec {
		if strings.TrimSpace(strings.TrimPrefix(f, "\ufeff")) != Header[i] {
			return fmt.Errorf("header must be %q, column %d is %q", strings.Join(Header, ","), i+1, f)
		}
	}
	return nil
}

func parseRecord(rec []string) (Entry, *ParseError) {
	var e Entry
	e.DeviceID = strings.TrimSpace(rec[0])
	if err := ValidDeviceID(e.DeviceID); err != nil {
		return e, &ParseError{Column: "device_id", Err: err}
	}
	if len(rec) > 1 {
		fp := strings.ToLower(strings.TrimSpace(rec[1]))
		if fp != "" {
			if b, err := hex.DecodeString(fp); err != nil || len(b) != 32 {
				return e, &ParseError{Column: "bootstrap_sha256", Err: errors.New("not 64 hex digits (SHA-256 of the certificate DER)")}
			}
			e.BootstrapSHA256 = fp
		}
	}
	if len(rec) > 2 {
		c := strings.TrimSpace(rec[2])
		if c != "" {
			der, err := base64.StdEncoding.DecodeString(c)
			if err != nil {
				return e, &ParseError{Column: "final_csr", Err: errors.New("not base64 (standard encoding) DER")}
			}
			e.FinalCSR = der
		}
	}
	if len(rec) > baseColumns {
		a, perr := parseAttestation(rec[baseColumns:])
		if perr != nil {
			return e, perr
		}
		e.Attestation = a
	}
	return e, nil
}

func parseAttestation(f []string) (*Attestation, *ParseError) {
	get := func(i int) string {
		if i < len(f) {
			return strings.TrimSpace(f[i])
		}
		return ""
	}
	ekc, ekp, akp, akn := strings.ToLower(get(0)), strings.ToLower(get(1)), get(2), strings.ToLower(get(3))
	if ekc == "" && ekp == "" && akp == "" && akn == "" {
		return nil, nil
	}
	a := &Attestation{EKCertSHA256: ekc, EKPubSHA256: ekp}
	if ekc != "" && !isSHA256Hex(ekc) {
		return nil, &ParseError{Column: "ek_cert_sha256", Err: errors.New("not 64 hex digits (SHA-256 of the EK certificate DER)")}
	}
	if !isSHA256Hex(ekp) {
		return nil, &ParseError{Column: "ek_pub_sha256", Err: errors.New("not 64 hex digits (SHA-256 of the EK public key DER); required with the other attestation columns")}
	}
	var err error
	if a.AKPublic, err = base64.StdEncoding.DecodeString(akp); err != nil || len(a.AKPublic) == 0 {
		return nil, &ParseError{Column: "ak_public", Err: errors.New("not base64 (standard encoding) of the AK's TPMT_PUBLIC; required with the other attestation columns")}
	}
	if a.AKName, err = hex.DecodeString(akn); err != nil || len(a.AKName) < 34 {
		return nil, &ParseError{Column: "ak_name", Err: errors.New("not the hex TPM name of the AK (nameAlg and digest); required with the other attestation columns")}
	}
	return a, nil
}

func isSHA256Hex(s string) bool {
	b, err := hex.DecodeString(s)
	return err == nil && len(b) == 32
}

// Lookup finds a device.
func (l *List) Lookup(deviceID string) (Entry, bool) {
	e, ok := l.byID[deviceID]
	return e, ok
}

// Attested reports whether the header has the attestation columns.
func (l *List) Attested() bool { return l.width > baseColumns }

// Len is the number of devices.
func (l *List) Len() int { return len(l.order) }

// Entries returns the devices in file order.
func (l *List) Entries() []Entry {
	out := make([]Entry, 0, len(l.order))
	for _, id := range l.order {
		out = append(out, l.byID[id])
	}
	return out
}

// Record is the CSV record of an entry.
func (e Entry) Record() []string {
	csr := ""
	if len(e.FinalCSR) > 0 {
		csr = base64.StdEncoding.EncodeToString(e.FinalCSR)
	}
	rec := []string{e.DeviceID, e.BootstrapSHA256, csr}
	if a := e.Attestation; a != nil {
		rec = append(rec, a.EKCertSHA256, a.EKPubSHA256, base64.StdEncoding.EncodeToString(a.AKPublic), hex.EncodeToString(a.AKName))
	}
	return rec
}

// ValidDeviceID checks that s can be an AWS IoT thing name (and so an MQTT
// client ID and a certificate CN): protocol.ValidThingName, the one rule.
func ValidDeviceID(s string) error {
	if err := protocol.ValidThingName(s); err != nil {
		return fmt.Errorf("device ID %w", err)
	}
	return nil
}
