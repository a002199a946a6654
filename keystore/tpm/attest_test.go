package tpm

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"path/filepath"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/bootcert/bootcert/internal/testenv"
	"github.com/bootcert/bootcert/keystore"
)

func manufacture(t *testing.T) *testenv.Manufactured {
	t.Helper()
	testenv.Require(t, "swtpm", "swtpm_setup")
	dir := t.TempDir()
	m, err := testenv.Manufacture(filepath.Join(dir, "state"), filepath.Join(dir, "ca"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestEndorsementAKCertifyActivate(t *testing.T) {
	m := manufacture(t)
	sw := testenv.StartManufactured(t, m)
	t.Cleanup(func() { CloseDevice(sw.Device()) })
	b, _ := newBackend()
	ctx := context.Background()
	dir := t.TempDir()

	key := generate(t, b, blobURI(sw.Device(), dir, "key.tpmkey"), keystore.ECDSAP256)
	key.Close()
	ekInfo, err := b.Endorsement(ctx, mustURI(t, blobURI(sw.Device(), dir, "key.tpmkey")))
	if err != nil {
		t.Fatal(err)
	}
	if ekInfo.Template != "rsa-2048" || ekInfo.NVIndex != 0x01C00002 {
		t.Fatalf("EK %s at NV %#x, want rsa-2048 at 0x01c00002", ekInfo.Template, ekInfo.NVIndex)
	}
	if !bytes.Equal(ekInfo.Certificate, m.EKCertRSA) {
		t.Fatal("the EK certificate read from NV is not the one swtpm_setup wrote")
	}
	ekPub, err := tpm2.Unmarshal[tpm2.TPMTPublic](ekInfo.Public)
	if err != nil {
		t.Fatal(err)
	}

	akURI := mustURI(t, blobURI(sw.Device(), dir, "key.ak.tpmkey"))
	ak, err := b.CreateAK(ctx, akURI)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.CreateAK(ctx, akURI); !errors.Is(err, keystore.ErrExists) {
		t.Fatalf("second CreateAK: %v, want ErrExists", err)
	}
	akPub, err := tpm2.Unmarshal[tpm2.TPMTPublic](ak.Public)
	if err != nil {
		t.Fatal(err)
	}
	a := akPub.ObjectAttributes
	if !a.Restricted || !a.SignEncrypt || a.Decrypt || !a.FixedTPM || !a.FixedParent || !a.SensitiveDataOrigin || !a.NoDA {
		t.Fatalf("AK attributes %+v", a)
	}
	if name, _ := tpm2.ObjectName(akPub); !bytes.Equal(name.Buffer, ak.Name) {
		t.Fatal("AK name is not nameAlg || H(public)")
	}
	// An AK is not a TLS key: Open refuses it.
	if _, err := b.Open(ctx, akURI); err == nil {
		t.Fatal("Open of an attestation key succeeded")
	}

	t.Run("ok/activate", func(t *testing.T) {
		ek, err := tpm2.ImportEncapsulationKey(ekPub)
		if err != nil {
			t.Fatal(err)
		}
		secret := make([]byte, 32)
		rand.Read(secret)
		blob, enc, err := tpm2.CreateCredential(rand.Reader, ek, ak.Name, secret)
		if err != nil {
			t.Fatal(err)
		}
		got, err := b.ActivateCredential(ctx, akURI, ekInfo, blob, enc)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, secret) {
			t.Fatal("activated secret differs")
		}
		// Bound to another name, the TPM refuses.
		other := append([]byte(nil), ak.Name...)
		other[len(other)-1] ^= 1
		blob, enc, _ = tpm2.CreateCredential(rand.Reader, ek, other, secret)
		if _, err := b.ActivateCredential(ctx, akURI, ekInfo, blob, enc); err == nil {
			t.Fatal("activation of a credential for another AK name succeeded")
		}
	})

	t.Run("ok/certify", func(t *testing.T) {
		qd := bytes.Repeat([]byte{7}, 32)
		c, err := b.Certify(ctx, mustURI(t, blobURI(sw.Device(), dir, "key.tpmkey")), akURI, qd)
		if err != nil {
			t.Fatal(err)
		}
		att, err := tpm2.Unmarshal[tpm2.TPMSAttest](c.Attest)
		if err != nil {
			t.Fatal(err)
		}
		if att.Type != tpm2.TPMSTAttestCertify || !bytes.Equal(att.ExtraData.Buffer, qd) {
			t.Fatalf("attest type %v extra %x", att.Type, att.ExtraData.Buffer)
		}
		ci, _ := att.Attested.Certify()
		pub, _ := tpm2.Unmarshal[tpm2.TPMTPublic](c.Public)
		if name, _ := tpm2.ObjectName(pub); !bytes.Equal(name.Buffer, ci.Name.Buffer) {
			t.Fatal("certified name is not the key's")
		}
		if !pub.ObjectAttributes.NoDA {
			t.Fatal("new key lacks noDA")
		}
		if _, err := b.Certify(ctx, mustURI(t, blobURI(sw.Device(), dir, "key.tpmkey")), akURI, make([]byte, 65)); err == nil {
			t.Fatal("65 bytes of qualifying data accepted")
		}
	})

	t.Run("ok/lockout", func(t *testing.T) {
		lo, err := b.Lockout(ctx, akURI)
		if err != nil {
			t.Fatal(err)
		}
		if lo.MaxTries == 0 || lo.InLockout || lo.Counter != 0 {
			t.Fatalf("lockout %+v", lo)
		}
	})
}

func TestEndorsementWithoutCertificate(t *testing.T) {
	sw := startTPM(t)
	b, _ := newBackend()
	ek, err := b.Endorsement(context.Background(), mustURI(t, "tpm:device="+sw.Device()+";handle=0x81000101"))
	if err != nil {
		t.Fatal(err)
	}
	if ek.Certificate != nil || ek.Template != "rsa-2048" || len(ek.Public) == 0 {
		t.Fatalf("endorsement %+v", ek)
	}
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](ek.Public)
	if err != nil {
		t.Fatal(err)
	}
	k, err := tpm2.Pub(*pub)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := x509.MarshalPKIXPublicKey(k); err != nil {
		t.Fatal(err)
	}
}
