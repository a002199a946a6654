package config

import (
	"encoding"
	"fmt"
	"math"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// This file is bootcertd's TOML decoder: the TOML 1.0 that a configuration
// of tables of scalar keys uses (tables, dotted and quoted keys, basic and
// literal strings, single- and multi-line, integers, floats, booleans,
// arrays), decoded into Config by its `toml` struct tags, strictly:
// duplicate keys and tables, unknown keys and values of the wrong type are
// errors naming the key and the line. Arrays of tables, inline tables and
// dates are TOML the schema has no use for: they are refused by name.
//
// It replaces github.com/BurntSushi/toml in the daemon, which was about
// 0.14 MiB of bootcertd's binary for the same job (docs/bootcertd.md,
// Footprint); the tests check that both decode the same text to the same
// Config.

// tomlValue is one parsed value: string, int64, float64, bool or []any.
type tomlValue struct {
	v    any
	line int
}

type tomlParser struct {
	file   string
	s      string
	i      int
	line   int
	table  string               // current table ("" = root)
	vals   map[string]tomlValue // full dotted key -> value
	tables map[string]int       // defined table -> line
	last   string               // last key, for errors
}

func (p *tomlParser) fail(format string, args ...any) error {
	return &Error{File: p.file, Key: p.last, Reason: fmt.Sprintf("line %d: %s", p.line, fmt.Sprintf(format, args...))}
}

func (p *tomlParser) eof() bool { return p.i >= len(p.s) }

// skipSpace skips blanks; with newlines, also line ends and comments.
func (p *tomlParser) skipSpace(newlines bool) {
	for !p.eof() {
		switch c := p.s[p.i]; {
		case c == ' ' || c == '\t':
			p.i++
		case newlines && c == '\n':
			p.i++
			p.line++
		case newlines && c == '\r' && strings.HasPrefix(p.s[p.i:], "\r\n"):
			p.i += 2
			p.line++
		case newlines && c == '#':
			p.skipComment()
		default:
			return
		}
	}
}

func (p *tomlParser) skipComment() {
	for !p.eof() && p.s[p.i] != '\n' && p.s[p.i] != '\r' {
		p.i++
	}
}

// endOfLine accepts blanks, a comment, then a line end or the end.
func (p *tomlParser) endOfLine() error {
	p.skipSpace(false)
	if !p.eof() && p.s[p.i] == '#' {
		p.skipComment()
	}
	switch {
	case p.eof():
		return nil
	case p.s[p.i] == '\n':
		p.i++
	case strings.HasPrefix(p.s[p.i:], "\r\n"):
		p.i += 2
	default:
		return p.fail("unexpected %q after the value (one key = value per line)", p.rest())
	}
	p.line++
	return nil
}

// rest is the rest of the line, shortened, for errors.
func (p *tomlParser) rest() string {
	r := p.s[p.i:]
	if j := strings.IndexAny(r, "\r\n"); j >= 0 {
		r = r[:j]
	}
	if len(r) > 20 {
		r = r[:20] + "..."
	}
	return r
}

func decodeTOML(file string, data []byte, c *Config) error {
	s := strings.TrimPrefix(string(data), "\uFEFF")
	if !utf8.ValidString(s) {
		return &Error{File: file, Reason: "not UTF-8 text"}
	}
	// TOML allows no control characters but tab and line ends, anywhere
	line := 1
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\n':
			line++
		case c == '\r' && i+1 < len(s) && s[i+1] == '\n', c == '\t':
		case c < 0x20 || c == 0x7f:
			return &Error{File: file, Reason: fmt.Sprintf("line %d: control character %#x (TOML allows only tabs and line ends)", line, c)}
		}
	}
	p := &tomlParser{file: file, s: s, line: 1, vals: map[string]tomlValue{}, tables: map[string]int{}}
	if err := p.parse(); err != nil {
		return err
	}
	used := map[string]bool{}
	if err := p.assign(reflect.ValueOf(c).Elem(), "", used); err != nil {
		return err
	}
	// unknown keys and tables, in the order of the file
	type unk struct {
		key  string
		line int
	}
	var unknown []unk
	for k, v := range p.vals {
		if !used[k] {
			unknown = append(unknown, unk{k, v.line})
		}
	}
	for k, line := range p.tables {
		if !used[k] {
			unknown = append(unknown, unk{k, line})
		}
	}
	if len(unknown) == 0 {
		return nil
	}
	slices.SortFunc(unknown, func(a, b unk) int {
		if a.line != b.line {
			return a.line - b.line
		}
		return strings.Compare(a.key, b.key)
	})
	var keys []string
	for _, u := range unknown {
		keys = append(keys, u.key)
	}
	return &Error{File: file, Key: keys[0], Reason: fmt.Sprintf("line %d: unknown key (unknown keys: %s; check the spelling against the Configuration table of %s)", unknown[0].line, strings.Join(keys, ", "), ReferenceDoc)}
}

func (p *tomlParser) parse() error {
	for {
		p.skipSpace(true)
		if p.eof() {
			return nil
		}
		if p.s[p.i] == '[' {
			if err := p.header(); err != nil {
				return err
			}
			continue
		}
		if err := p.keyValue(); err != nil {
			return err
		}
	}
}

func (p *tomlParser) header() error {
	if strings.HasPrefix(p.s[p.i:], "[[") {
		return p.fail("arrays of tables ([[...]]) are not part of bootcertd's configuration")
	}
	p.i++
	p.skipSpace(false)
	key, err := p.key()
	if err != nil {
		return err
	}
	p.skipSpace(false)
	if p.eof() || p.s[p.i] != ']' {
		return p.fail("table header [%s without its closing ]", key)
	}
	p.i++
	p.last = key
	if l, ok := p.tables[key]; ok {
		return p.fail("table [%s] defined twice (first on line %d)", key, l)
	}
	if _, ok := p.vals[key]; ok {
		return p.fail("[%s]: already a key with a value", key)
	}
	p.tables[key] = p.line
	p.table = key
	return p.endOfLine()
}

func (p *tomlParser) keyValue() error {
	key, err := p.key()
	if err != nil {
		return err
	}
	if p.table != "" {
		key = p.table + "." + key
	}
	p.last = key
	p.skipSpace(false)
	if p.eof() || p.s[p.i] != '=' {
		return p.fail("expected = after the key")
	}
	p.i++
	p.skipSpace(false)
	line := p.line
	v, err := p.value()
	if err != nil {
		return err
	}
	if prev, ok := p.vals[key]; ok {
		return p.fail("key defined twice (first on line %d)", prev.line)
	}
	if _, ok := p.tables[key]; ok {
		return p.fail("already a table [%s]", key)
	}
	p.vals[key] = tomlValue{v, line}
	return p.endOfLine()
}

// key parses a dotted key of bare and quoted parts.
func (p *tomlParser) key() (string, error) {
	var parts []string
	for {
		p.skipSpace(false)
		if p.eof() {
			return "", p.fail("expected a key")
		}
		switch c := p.s[p.i]; {
		case c == '"' || c == '\'':
			s, err := p.str()
			if err != nil {
				return "", err
			}
			parts = append(parts, s)
		case isBare(c):
			j := p.i
			for p.i < len(p.s) && isBare(p.s[p.i]) {
				p.i++
			}
			parts = append(parts, p.s[j:p.i])
		default:
			return "", p.fail("expected a key, found %q", p.rest())
		}
		p.skipSpace(false)
		if p.eof() || p.s[p.i] != '.' {
			return strings.Join(parts, "."), nil
		}
		p.i++
	}
}

func isBare(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

func (p *tomlParser) value() (any, error) {
	if p.eof() {
		return nil, p.fail("missing value")
	}
	switch c := p.s[p.i]; {
	case c == '"' || c == '\'':
		return p.str()
	case c == '[':
		return p.array()
	case c == '{':
		return nil, p.fail("inline tables ({...}) are not part of bootcertd's configuration: write a [table]")
	}
	j := p.i
	for p.i < len(p.s) && !strings.ContainsRune(" \t\r\n,]#", rune(p.s[p.i])) {
		p.i++
	}
	tok := p.s[j:p.i]
	switch tok {
	case "true":
		return true, nil
	case "false":
		return false, nil
	case "":
		return nil, p.fail("missing value")
	}
	if v, ok := parseTOMLInt(tok); ok {
		return v, nil
	}
	if v, ok := parseTOMLFloat(tok); ok {
		return v, nil
	}
	if len(tok) >= 5 && tok[4] == '-' || len(tok) >= 3 && tok[2] == ':' {
		return nil, p.fail("dates and times (%s) are not part of bootcertd's configuration", tok)
	}
	return nil, p.fail("%q is not a TOML value (strings are quoted: \"...\")", tok)
}

// digits checks TOML's underscores (each between two digits) and returns
// the digits without them.
func digits(s string, ok func(byte) bool) (string, bool) {
	if s == "" || s[0] == '_' || s[len(s)-1] == '_' || strings.Contains(s, "__") {
		return "", false
	}
	s = strings.ReplaceAll(s, "_", "")
	for i := 0; i < len(s); i++ {
		if !ok(s[i]) {
			return "", false
		}
	}
	return s, s != ""
}

func isDec(c byte) bool { return c >= '0' && c <= '9' }

func parseTOMLInt(tok string) (int64, bool) {
	for _, b := range []struct {
		prefix string
		base   int
		ok     func(byte) bool
	}{
		{"0x", 16, func(c byte) bool { return isDec(c) || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' }},
		{"0o", 8, func(c byte) bool { return c >= '0' && c <= '7' }},
		{"0b", 2, func(c byte) bool { return c == '0' || c == '1' }},
	} {
		if rest, ok := strings.CutPrefix(tok, b.prefix); ok {
			d, ok := digits(rest, b.ok)
			if !ok {
				return 0, false
			}
			v, err := strconv.ParseInt(d, b.base, 64)
			return v, err == nil
		}
	}
	sign := ""
	if tok != "" && (tok[0] == '+' || tok[0] == '-') {
		sign, tok = tok[:1], tok[1:]
	}
	d, ok := digits(tok, isDec)
	if !ok || len(d) > 1 && d[0] == '0' {
		return 0, false
	}
	v, err := strconv.ParseInt(sign+d, 10, 64)
	return v, err == nil
}

func parseTOMLFloat(tok string) (float64, bool) {
	t := strings.TrimLeft(tok, "+-")
	switch t {
	case "inf":
		if tok[0] == '-' {
			return math.Inf(-1), true
		}
		return math.Inf(1), true
	case "nan":
		return math.NaN(), true
	}
	mant, exp, hasExp := strings.Cut(strings.ToLower(t), "e")
	intPart, frac, hasFrac := strings.Cut(mant, ".")
	if !hasExp && !hasFrac {
		return 0, false
	}
	if d, ok := digits(intPart, isDec); !ok || len(d) > 1 && d[0] == '0' {
		return 0, false
	}
	if hasFrac {
		if _, ok := digits(frac, isDec); !ok {
			return 0, false
		}
	}
	if hasExp {
		if _, ok := digits(strings.TrimLeft(exp, "+-"), isDec); !ok || len(exp) > 1 && strings.ContainsAny(exp[1:], "+-") {
			return 0, false
		}
	}
	v, err := strconv.ParseFloat(strings.ReplaceAll(tok, "_", ""), 64)
	return v, err == nil
}

func (p *tomlParser) array() ([]any, error) {
	p.i++ // [
	out := []any{}
	for {
		p.skipSpace(true)
		if p.eof() {
			return nil, p.fail("array without its closing ]")
		}
		if p.s[p.i] == ']' {
			p.i++
			return out, nil
		}
		v, err := p.value()
		if err != nil {
			return nil, err
		}
		out = append(out, v)
		p.skipSpace(true)
		if p.eof() {
			return nil, p.fail("array without its closing ]")
		}
		switch p.s[p.i] {
		case ',':
			p.i++
		case ']':
			p.i++
			return out, nil
		default:
			return nil, p.fail("expected , or ] in the array, found %q", p.rest())
		}
	}
}

// str parses a basic or literal string, single- or multi-line.
func (p *tomlParser) str() (string, error) {
	q := p.s[p.i]
	multi := strings.HasPrefix(p.s[p.i:], strings.Repeat(string(q), 3))
	if multi {
		p.i += 3
		// a newline right after the opening delimiter is trimmed
		if strings.HasPrefix(p.s[p.i:], "\n") {
			p.i++
			p.line++
		} else if strings.HasPrefix(p.s[p.i:], "\r\n") {
			p.i += 2
			p.line++
		}
	} else {
		p.i++
	}
	var b strings.Builder
	for {
		if p.eof() {
			return "", p.fail("string without its closing %c", q)
		}
		c := p.s[p.i]
		if multi && strings.HasPrefix(p.s[p.i:], strings.Repeat(string(q), 3)) {
			// up to two more quotes belong to the string
			n := 3
			for n < 5 && p.i+n < len(p.s) && p.s[p.i+n] == q {
				n++
			}
			b.WriteString(strings.Repeat(string(q), n-3))
			p.i += n
			return b.String(), nil
		}
		if !multi && c == q {
			p.i++
			return b.String(), nil
		}
		switch {
		case c == '\n' || c == '\r':
			if !multi {
				return "", p.fail("newline in a string (use \"\"\" for a multi-line string)")
			}
			if c == '\n' {
				p.line++
			}
			b.WriteByte(c)
			p.i++
		case c == '\\' && q == '"':
			if err := p.escape(&b, multi); err != nil {
				return "", err
			}
		case c < 0x20 && c != '\t' || c == 0x7f:
			return "", p.fail("control character %#x in a string", c)
		default:
			b.WriteByte(c)
			p.i++
		}
	}
}

func (p *tomlParser) escape(b *strings.Builder, multi bool) error {
	p.i++ // backslash
	if p.eof() {
		return p.fail("string without its closing \"")
	}
	c := p.s[p.i]
	p.i++
	switch c {
	case 'b':
		b.WriteByte('\b')
	case 't':
		b.WriteByte('\t')
	case 'n':
		b.WriteByte('\n')
	case 'f':
		b.WriteByte('\f')
	case 'r':
		b.WriteByte('\r')
	case 'e':
		b.WriteByte(0x1b)
	case '"':
		b.WriteByte('"')
	case '\\':
		b.WriteByte('\\')
	case 'u', 'U':
		n := 4
		if c == 'U' {
			n = 8
		}
		if p.i+n > len(p.s) {
			return p.fail("short \\%c escape", c)
		}
		v, err := strconv.ParseUint(p.s[p.i:p.i+n], 16, 32)
		if err != nil || !utf8.ValidRune(rune(v)) {
			return p.fail("\\%c%s is not a Unicode scalar value", c, p.s[p.i:p.i+n])
		}
		b.WriteRune(rune(v))
		p.i += n
	case ' ', '\t', '\r', '\n':
		// a line-ending backslash in a multi-line string trims the
		// newline and the blanks after it
		if !multi {
			return p.fail("invalid escape \\%c", c)
		}
		p.i--
		j := p.i
		for j < len(p.s) && (p.s[j] == ' ' || p.s[j] == '\t') {
			j++
		}
		if j >= len(p.s) || p.s[j] != '\n' && p.s[j] != '\r' {
			return p.fail("invalid escape \\%c", c)
		}
		p.i = j
		for !p.eof() && strings.ContainsRune(" \t\r\n", rune(p.s[p.i])) {
			if p.s[p.i] == '\n' {
				p.line++
			}
			p.i++
		}
	default:
		return p.fail("invalid escape \\%c", c)
	}
	return nil
}

var textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()

// assign sets the fields of the struct v (the table prefix) from the parsed
// values, by their toml tags, and records the keys and tables it used.
func (p *tomlParser) assign(v reflect.Value, prefix string, used map[string]bool) error {
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		sf := t.Field(i)
		name := sf.Tag.Get("toml")
		if name == "-" || !sf.IsExported() {
			continue
		}
		if name == "" {
			name = strings.ToLower(sf.Name)
		}
		key := name
		if prefix != "" {
			key = prefix + "." + name
		}
		fv := v.Field(i)
		if fv.Kind() == reflect.Struct && !reflect.PointerTo(sf.Type).Implements(textUnmarshaler) {
			if tv, ok := p.vals[key]; ok {
				p.line, p.last = tv.line, key
				return p.fail("a table ([%s]), not a value", key)
			}
			used[key] = true
			if err := p.assign(fv, key, used); err != nil {
				return err
			}
			continue
		}
		if fv.Kind() == reflect.Map {
			if err := p.assignMap(fv, key, used); err != nil {
				return err
			}
			continue
		}
		if _, ok := p.tables[key]; ok {
			p.line, p.last = p.tables[key], key
			return p.fail("a value (%s = ...), not a table", key)
		}
		tv, ok := p.vals[key]
		if !ok {
			continue
		}
		used[key] = true
		p.line, p.last = tv.line, key
		if err := p.set(fv, tv.v); err != nil {
			return err
		}
	}
	return nil
}

func tomlType(v any) string {
	switch v.(type) {
	case string:
		return "a string"
	case int64:
		return "an integer"
	case float64:
		return "a float"
	case bool:
		return "a boolean"
	case []any:
		return "an array"
	}
	return fmt.Sprintf("%T", v)
}

// assignMap sets a map of strings (a [prefix] table of free-named string
// keys, e.g. provisioning.parameters) from the values under prefix.
func (p *tomlParser) assignMap(fv reflect.Value, prefix string, used map[string]bool) error {
	if fv.Type().Key().Kind() != reflect.String || fv.Type().Elem().Kind() != reflect.String {
		return fmt.Errorf("config: %s: unsupported map type %s", prefix, fv.Type())
	}
	if tv, ok := p.vals[prefix]; ok {
		p.line, p.last = tv.line, prefix
		return p.fail("a table ([%s]), not a value", prefix)
	}
	if _, ok := p.tables[prefix]; ok {
		used[prefix] = true
	}
	keys := make([]string, 0)
	for k := range p.vals {
		if strings.HasPrefix(k, prefix+".") {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		tv := p.vals[k]
		p.line, p.last = tv.line, k
		name := strings.TrimPrefix(k, prefix+".")
		if strings.Contains(name, ".") {
			return p.fail("a string (%s = \"...\"), not a table", k[:len(prefix)+1+strings.Index(name, ".")])
		}
		str, ok := tv.v.(string)
		if !ok {
			return p.fail("want a string, not %s", tomlType(tv.v))
		}
		if fv.IsNil() {
			fv.Set(reflect.MakeMap(fv.Type()))
		}
		fv.SetMapIndex(reflect.ValueOf(name), reflect.ValueOf(str))
		used[k] = true
	}
	return nil
}

func (p *tomlParser) set(fv reflect.Value, v any) error {
	if fv.CanAddr() && fv.Addr().Type().Implements(textUnmarshaler) {
		s, ok := v.(string)
		if !ok {
			return p.fail("want a string, not %s", tomlType(v))
		}
		if err := fv.Addr().Interface().(encoding.TextUnmarshaler).UnmarshalText([]byte(s)); err != nil {
			return p.fail("%v", err)
		}
		return nil
	}
	switch fv.Kind() {
	case reflect.String:
		s, ok := v.(string)
		if !ok {
			return p.fail("want a string, not %s", tomlType(v))
		}
		fv.SetString(s)
	case reflect.Bool:
		b, ok := v.(bool)
		if !ok {
			return p.fail("want true or false, not %s", tomlType(v))
		}
		fv.SetBool(b)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		n, ok := v.(int64)
		if !ok {
			return p.fail("want an integer, not %s", tomlType(v))
		}
		if fv.OverflowInt(n) {
			return p.fail("%d is out of range", n)
		}
		fv.SetInt(n)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		n, ok := v.(int64)
		if !ok {
			return p.fail("want an integer, not %s", tomlType(v))
		}
		if n < 0 || fv.OverflowUint(uint64(n)) {
			return p.fail("%d is out of range", n)
		}
		fv.SetUint(uint64(n))
	case reflect.Float32, reflect.Float64:
		switch n := v.(type) {
		case float64:
			fv.SetFloat(n)
		case int64:
			fv.SetFloat(float64(n))
		default:
			return p.fail("want a number, not %s", tomlType(v))
		}
	case reflect.Slice:
		arr, ok := v.([]any)
		if !ok {
			return p.fail("want an array, not %s", tomlType(v))
		}
		out := reflect.MakeSlice(fv.Type(), len(arr), len(arr))
		key := p.last
		for i, e := range arr {
			p.last = fmt.Sprintf("%s[%d]", key, i)
			if err := p.set(out.Index(i), e); err != nil {
				return err
			}
		}
		p.last = key
		fv.Set(out)
	default:
		return p.fail("bootcertd cannot decode a %s field (a bug)", fv.Type())
	}
	return nil
}
