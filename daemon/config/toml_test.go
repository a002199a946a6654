package config

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
)

// burntSushi decodes text as the decoder bootcertd used before did (and as
// a reference TOML implementation does), strictly.
func burntSushi(t testing.TB, text string) (Config, error) {
	t.Helper()
	c := Defaults()
	md, err := toml.Decode(text, &c)
	if err == nil && len(md.Undecoded()) > 0 {
		err = errors.New("undecoded keys")
	}
	return c, err
}

// The same text decodes to the same Config here and in BurntSushi/toml:
// what its encoder writes (the tests' configurations), and the TOML a
// person writes (comments, quoting, multi-line arrays and strings, dotted
// keys, number forms).
func TestDecodeMatchesReference(t *testing.T) {
	full := Defaults()
	full.Broker = Broker{Endpoint: "127.0.0.1", Port: 18883, RootCA: "/tmp/ca \"quoted\" \\ ünï.pem", ALPN: ALPN}
	full.Identity.BootstrapKey = "pkcs11:token=t;object=b?module-path=/x.so&pin-value=1234"
	full.Verify = Verify{IssuerSHA256: []string{strings.Repeat("ab", 32)}, LocationHosts: []string{"a.example", "127.0.0.1"}}
	full.Timeouts.Reply = Duration(1500 * time.Millisecond)
	full.Fallback.Bootstrap = false
	full.Provisioning.Parameters = map[string]string{"EKPubSHA256": "ab", "Site": "hall 2"}
	var enc bytes.Buffer
	if err := toml.NewEncoder(&enc).Encode(full); err != nil {
		t.Fatal(err)
	}
	texts := map[string]string{
		"encoded": enc.String(),
		"handwritten": "\uFEFF# comment\r\n[broker] # trailing\n  endpoint = 'a.example' \n\tport = +8_883\n\"root_ca\" = \"\"\"\n/etc/\\\n   ca.pem\"\"\"\n" +
			"[identity]\nbootstrap_key = '''tpm:x\\y'''\nthing_name = \"gw\\u00e9\\U0001F600\\t\"\n" +
			"[fallback]\nrefusals = 0x10\nbootstrap = false\nwindow = \"1h2m\"\n" +
			"[verify]\nlocation_hosts = [\n  \"a\", # one\n  'b',\n\n]\nissuer_sha256 = []\n",
		"dotted": "broker.endpoint = \"x\"\nbroker . port = 0o17\n[timeouts]\nconnect = \"2s\"\n[ log ]\nlevel = \"warn\"\n",
		"binary": "[broker]\nport = 0b1010\n",
		"map":    "[provisioning]\ntemplate = \"t\"\nparameters.Site = \"a\"\n[provisioning.parameters]\n\"Rack-No\" = \"7\"\n",
	}
	for name, text := range texts {
		t.Run(name, func(t *testing.T) {
			want, err := burntSushi(t, text)
			if err != nil {
				t.Fatalf("reference decoder: %v\n%s", err, text)
			}
			got := Defaults()
			if err := decodeTOML("x.toml", []byte(text), &got); err != nil {
				t.Fatalf("decodeTOML: %v\n%s", err, text)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("decodeTOML:\n got %+v\nwant %+v", got, want)
			}
		})
	}
}

// What the decoder refuses, and that the error names the key and the line.
func TestDecodeErrors(t *testing.T) {
	for _, tc := range []struct{ text, key, reason string }{
		{"[broker]\nport = 1\nport = 2\n", "broker.port", "line 3: key defined twice (first on line 2)"},
		{"[provisioning.parameters]\nA = 1\n", "provisioning.parameters.A", "line 2: want a string, not an integer"},
		{"[provisioning]\nparameters = \"x\"\n", "provisioning.parameters", "a table ([provisioning.parameters]), not a value"},
		{"[log]\n[log]\n", "log", "line 2: table [log] defined twice"},
		{"[broker]\nport = \"8883\"\n", "broker.port", "line 2: want an integer, not a string"},
		{"[fallback]\nbootstrap = 1\n", "fallback.bootstrap", "want true or false, not an integer"},
		{"[timeouts]\n\nreply = \"soon\"\n", "timeouts.reply", `line 3: "soon" is not a duration`},
		{"[verify]\nlocation_hosts = [\"a\", 2]\n", "verify.location_hosts[1]", "want a string, not an integer"},
		{"[verify]\nlocation_hosts = \"a\"\n", "verify.location_hosts", "want an array, not a string"},
		{"broker = 1\n", "broker", "a table ([broker]), not a value"},
		{"[broker.port]\n", "broker.port", "a value (broker.port = ...), not a table"},
		{"[[broker]]\n", "", "arrays of tables"},
		{"[broker]\nendpoint = { a = 1 }\n", "broker.endpoint", "inline tables"},
		{"[state]\ndir = 1979-05-27\n", "state.dir", "dates and times"},
		{"[state]\ndir = /var/lib\n", "state.dir", "is not a TOML value"},
		{"[state]\ndir = \"a\" \"b\"\n", "state.dir", "one key = value per line"},
		{"[state]\ndir = \"a\n", "state.dir", "newline in a string"},
		{"[state]\ndir = \"a\\q\"\n", "state.dir", `invalid escape \q`},
		{"[broker]\nport = 99999999999999999999\n", "broker.port", "is not a TOML value"},
		{"[broker]\nport = 1__0\n", "broker.port", "is not a TOML value"},
		{"[broker]\nport = 012\n", "broker.port", "is not a TOML value"},
		{"[broker\n", "", "closing ]"},
		{"[control]\nsockets = \"x\"\n[logging]\nlevel = 1\n", "control.sockets", "line 2: unknown key (unknown keys: control.sockets, logging, logging.level;"},
	} {
		c := Defaults()
		err := decodeTOML("x.toml", []byte(tc.text), &c)
		var ce *Error
		if !errors.As(err, &ce) || ce.Key != tc.key || !strings.Contains(ce.Reason, tc.reason) || ce.File != "x.toml" {
			t.Errorf("%q: error %v (key %q), want key %q and %q", tc.text, err, keyOf(ce), tc.key, tc.reason)
		}
	}
}

func keyOf(e *Error) string {
	if e == nil {
		return "<no *Error>"
	}
	return e.Key
}
