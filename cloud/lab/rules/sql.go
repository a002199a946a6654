// Package rules parses and evaluates the subset of the AWS IoT SQL language
// that bootcert's topic rules use, so the lab's rule engine behaves like AWS
// IoT Core's for them ("AWS IoT SQL reference", iot-sql-reference.html).
//
// Supported:
//
//	SELECT item [, item ...] FROM 'topic filter' [WHERE condition]
//
// where an item is `*` or a term with an optional `AS alias`, a term is a
// field path (a, a.b), a literal (string in single quotes, number, true,
// false) or one of the functions topic(), topic(n), principal(), clientid(),
// timestamp(); a condition compares terms with =, <>, <, >, <=, >= and
// combines comparisons with AND, OR, NOT and parentheses. Keywords are
// case-insensitive. Anything else (other functions, CASE, arithmetic,
// nested SELECT, array indexes, double-quoted strings, ...) is refused by
// Parse with a *SyntaxError naming the token and its byte offset: a rule the
// lab cannot evaluate exactly must fail at load, not behave differently.
// Lab choices where AWS is more lenient: a function or literal in the
// SELECT list needs an AS alias, and <> is the only not-equal operator.
//
// Evaluation follows the documented AWS semantics for the subset: a missing
// field is Undefined and left out of the output; AND, OR and NOT with an
// Undefined (or non-Boolean) operand are Undefined; a WHERE that is not true
// does not fire the rule; see Statement.Apply for payload handling.
package rules

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// ErrSyntax is wrapped by every Parse error (a *SyntaxError).
var ErrSyntax = errors.New("unsupported or invalid AWS IoT SQL")

// SyntaxError names what was wrong, the offending token and its byte offset.
type SyntaxError struct {
	Pos   int    // byte offset in the SQL text
	Token string // the offending token ("" at end of input)
	Msg   string
}

func (e *SyntaxError) Error() string {
	tok := strconv.Quote(e.Token)
	if e.Token == "" {
		tok = "end of statement"
	}
	return fmt.Sprintf("AWS IoT SQL: %s at offset %d (%s)", e.Msg, e.Pos, tok)
}

// Unwrap makes errors.Is(err, ErrSyntax) true.
func (e *SyntaxError) Unwrap() error { return ErrSyntax }

type tokKind int

const (
	tEOF tokKind = iota
	tIdent
	tString
	tNumber
	tPunct // * , ( ) . and comparison operators
)

type token struct {
	kind tokKind
	text string // identifier / punctuation as written; string literal decoded
	raw  string // as written
	pos  int
}

func lex(sql string) ([]token, error) {
	var toks []token
	i := 0
	for i < len(sql) {
		r, n := utf8.DecodeRuneInString(sql[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			return nil, &SyntaxError{Pos: i, Token: sql[i : i+1], Msg: "invalid UTF-8"}
		case unicode.IsSpace(r):
			i += n
		case r == '\'':
			var b strings.Builder
			j := i + 1
			for {
				if j >= len(sql) {
					return nil, &SyntaxError{Pos: i, Token: sql[i:], Msg: "unterminated string literal"}
				}
				if sql[j] == '\'' {
					if j+1 < len(sql) && sql[j+1] == '\'' { // '' is a quote
						b.WriteByte('\'')
						j += 2
						continue
					}
					break
				}
				b.WriteByte(sql[j])
				j++
			}
			toks = append(toks, token{kind: tString, text: b.String(), raw: sql[i : j+1], pos: i})
			i = j + 1
		case r == '_' || unicode.IsLetter(r):
			j := i
			for j < len(sql) {
				r2, n2 := utf8.DecodeRuneInString(sql[j:])
				if r2 != '_' && !unicode.IsLetter(r2) && !unicode.IsDigit(r2) {
					break
				}
				j += n2
			}
			toks = append(toks, token{kind: tIdent, text: sql[i:j], raw: sql[i:j], pos: i})
			i = j
		case r >= '0' && r <= '9' || r == '-' && i+1 < len(sql) && sql[i+1] >= '0' && sql[i+1] <= '9':
			j := i + 1
			for j < len(sql) && (sql[j] >= '0' && sql[j] <= '9' || sql[j] == '.' || sql[j] == 'e' || sql[j] == 'E' ||
				(sql[j] == '-' || sql[j] == '+') && (sql[j-1] == 'e' || sql[j-1] == 'E')) {
				j++
			}
			text := sql[i:j]
			if _, err := strconv.ParseFloat(text, 64); err != nil {
				return nil, &SyntaxError{Pos: i, Token: text, Msg: "invalid number"}
			}
			toks = append(toks, token{kind: tNumber, text: text, raw: text, pos: i})
			i = j
		default:
			two := ""
			if i+1 < len(sql) {
				two = sql[i : i+2]
			}
			switch {
			case two == "<>" || two == "<=" || two == ">=":
				toks = append(toks, token{kind: tPunct, text: two, raw: two, pos: i})
				i += 2
			case strings.ContainsRune("*,().=<>", r):
				toks = append(toks, token{kind: tPunct, text: string(r), raw: string(r), pos: i})
				i++
			default:
				tok := sql[i : i+n]
				if two == "!=" {
					tok = two
				}
				return nil, &SyntaxError{Pos: i, Token: tok, Msg: "character or operator not supported by the lab's SQL subset"}
			}
		}
	}
	return append(toks, token{kind: tEOF, pos: len(sql)}), nil
}

// Statement is a parsed rule SQL statement.
type Statement struct {
	SQL    string
	Items  []Item // the SELECT list
	Filter string // the FROM topic filter
	where  expr   // nil without WHERE
}

// Item is one entry of the SELECT list.
type Item struct {
	Star  bool   // `*`
	Alias string // output key: the AS alias, or the last element of a path
	term  term
}

// Parse parses one statement of the supported subset.
func Parse(sql string) (*Statement, error) {
	toks, err := lex(sql)
	if err != nil {
		return nil, err
	}
	p := &parser{toks: toks}
	st, err := p.statement()
	if err != nil {
		return nil, err
	}
	st.SQL = sql
	return st, nil
}

type parser struct {
	toks  []token
	i     int
	depth int
}

func (p *parser) peek() token { return p.toks[p.i] }
func (p *parser) next() token {
	t := p.toks[p.i]
	if t.kind != tEOF {
		p.i++
	}
	return t
}

func (p *parser) errAt(t token, format string, args ...any) error {
	return &SyntaxError{Pos: t.pos, Token: t.raw, Msg: fmt.Sprintf(format, args...)}
}

func isKeyword(t token, kw string) bool { return t.kind == tIdent && strings.EqualFold(t.text, kw) }

var reserved = map[string]bool{"SELECT": true, "FROM": true, "WHERE": true, "AS": true, "AND": true, "OR": true, "NOT": true,
	"CASE": true, "WHEN": true, "THEN": true, "ELSE": true, "END": true, "IN": true, "IS": true, "NULL": true, "LIKE": true,
	"BETWEEN": true, "SET": true, "UNDEFINED": true}

func (p *parser) expectKeyword(kw string) error {
	t := p.next()
	if !isKeyword(t, kw) {
		return p.errAt(t, "expected %s", kw)
	}
	return nil
}

func (p *parser) statement() (*Statement, error) {
	if err := p.expectKeyword("SELECT"); err != nil {
		return nil, err
	}
	st := &Statement{}
	seen := map[string]bool{}
	for {
		t := p.peek()
		if t.kind == tPunct && t.text == "*" {
			p.next()
			if seen["*"] {
				return nil, p.errAt(t, "* selected twice")
			}
			seen["*"] = true
			st.Items = append(st.Items, Item{Star: true})
		} else {
			tm, err := p.term()
			if err != nil {
				return nil, err
			}
			it := Item{term: tm}
			if isKeyword(p.peek(), "AS") {
				p.next()
				a := p.next()
				if a.kind != tIdent || reserved[strings.ToUpper(a.text)] {
					return nil, p.errAt(a, "expected an alias name after AS")
				}
				it.Alias = a.text
			} else if f, ok := tm.(field); ok {
				it.Alias = f.path[len(f.path)-1]
			} else {
				return nil, p.errAt(t, "a function or literal in the SELECT list needs AS alias (the lab does not invent key names)")
			}
			if seen[it.Alias] {
				return nil, p.errAt(t, "output key %q selected twice", it.Alias)
			}
			seen[it.Alias] = true
			st.Items = append(st.Items, it)
		}
		if t := p.peek(); t.kind == tPunct && t.text == "," {
			p.next()
			continue
		}
		break
	}
	if err := p.expectKeyword("FROM"); err != nil {
		return nil, err
	}
	ft := p.next()
	if ft.kind != tString {
		return nil, p.errAt(ft, "FROM takes a topic filter in single quotes")
	}
	if err := ValidateFilter(ft.text); err != nil {
		return nil, p.errAt(ft, "%v", err)
	}
	st.Filter = ft.text
	if isKeyword(p.peek(), "WHERE") {
		p.next()
		e, err := p.or()
		if err != nil {
			return nil, err
		}
		st.where = e
	}
	if t := p.next(); t.kind != tEOF {
		return nil, p.errAt(t, "unexpected token (the lab supports SELECT ... FROM '...' [WHERE ...] only)")
	}
	return st, nil
}

func (p *parser) or() (expr, error) {
	l, err := p.and()
	if err != nil {
		return nil, err
	}
	for isKeyword(p.peek(), "OR") {
		p.next()
		r, err := p.and()
		if err != nil {
			return nil, err
		}
		l = logical{op: "OR", l: l, r: r}
	}
	return l, nil
}

func (p *parser) and() (expr, error) {
	l, err := p.not()
	if err != nil {
		return nil, err
	}
	for isKeyword(p.peek(), "AND") {
		p.next()
		r, err := p.not()
		if err != nil {
			return nil, err
		}
		l = logical{op: "AND", l: l, r: r}
	}
	return l, nil
}

const maxDepth = 100

func (p *parser) not() (expr, error) {
	depth := 0
	for isKeyword(p.peek(), "NOT") {
		p.next()
		depth++
		if depth > maxDepth {
			return nil, p.errAt(p.peek(), "too deeply nested")
		}
	}
	e, err := p.comparison()
	if err != nil {
		return nil, err
	}
	for ; depth > 0; depth-- {
		e = not{e}
	}
	return e, nil
}

func (p *parser) comparison() (expr, error) {
	t := p.peek()
	if t.kind == tPunct && t.text == "(" {
		// A parenthesised condition. (Parenthesised terms are not in the subset.)
		p.next()
		if p.depth++; p.depth > maxDepth {
			return nil, p.errAt(t, "too deeply nested")
		}
		e, err := p.or()
		p.depth--
		if err != nil {
			return nil, err
		}
		if c := p.next(); c.kind != tPunct || c.text != ")" {
			return nil, p.errAt(c, "expected )")
		}
		return e, nil
	}
	l, err := p.term()
	if err != nil {
		return nil, err
	}
	op := p.peek()
	switch op.text {
	case "=", "<>", "<", ">", "<=", ">=":
		if op.kind != tPunct {
			break
		}
		p.next()
		r, err := p.term()
		if err != nil {
			return nil, err
		}
		return compare{op: op.text, l: l, r: r}, nil
	}
	return truth{l}, nil
}

func (p *parser) term() (term, error) {
	t := p.next()
	switch t.kind {
	case tString:
		return literal{v: t.text}, nil
	case tNumber:
		f, _ := strconv.ParseFloat(t.text, 64)
		return literal{v: number{f: f, text: t.text}}, nil
	case tIdent:
		up := strings.ToUpper(t.text)
		if up == "TRUE" || up == "FALSE" {
			return literal{v: up == "TRUE"}, nil
		}
		if reserved[up] {
			return nil, p.errAt(t, "keyword %s is not supported here", up)
		}
		if n := p.peek(); n.kind == tPunct && n.text == "(" {
			return p.function(t)
		}
		path := []string{t.text}
		for {
			n := p.peek()
			if n.kind != tPunct || n.text != "." {
				break
			}
			p.next()
			seg := p.next()
			if seg.kind != tIdent {
				return nil, p.errAt(seg, "expected a field name after .")
			}
			path = append(path, seg.text)
		}
		return field{path: path}, nil
	case tPunct:
		if t.text == "*" {
			return nil, p.errAt(t, "* is only allowed as a SELECT item of its own")
		}
		if t.text == "(" {
			return nil, p.errAt(t, "parenthesised expressions are not supported in a term")
		}
	}
	return nil, p.errAt(t, "expected a field, literal or function")
}

func (p *parser) function(name token) (term, error) {
	p.next() // (
	fn := strings.ToLower(name.text)
	var args []token
	for {
		t := p.next()
		if t.kind == tPunct && t.text == ")" {
			break
		}
		if t.kind == tEOF {
			return nil, p.errAt(t, "unterminated call of %s()", name.text)
		}
		if len(args) > 0 {
			if t.kind != tPunct || t.text != "," {
				return nil, p.errAt(t, "expected , or ) in call of %s()", name.text)
			}
			t = p.next()
		}
		args = append(args, t)
	}
	switch fn {
	case "principal", "clientid", "timestamp":
		if len(args) != 0 {
			return nil, p.errAt(args[0], "%s() takes no arguments", fn)
		}
		return call{fn: fn}, nil
	case "topic":
		if len(args) == 0 {
			return call{fn: fn}, nil
		}
		n, err := strconv.Atoi(args[0].text)
		if len(args) != 1 || args[0].kind != tNumber || err != nil || n < 1 {
			return nil, p.errAt(args[0], "topic() takes one positive integer (1 is the first topic level)")
		}
		return call{fn: fn, n: n}, nil
	}
	return nil, p.errAt(name, "function %s() is not supported by the lab (supported: topic, principal, clientid, timestamp)", name.text)
}

// ValidateFilter checks an MQTT topic filter (MQTT 3.1.1 section 4.7):
// non-empty, no NUL, `#` only as the whole last level, `+` only as a whole
// level.
func ValidateFilter(f string) error {
	if f == "" {
		return errors.New("empty topic filter")
	}
	if len(f) > 65535 {
		return errors.New("topic filter longer than 65535 bytes")
	}
	if strings.ContainsRune(f, 0) {
		return errors.New("topic filter contains NUL")
	}
	levels := strings.Split(f, "/")
	for i, l := range levels {
		if strings.Contains(l, "#") && (l != "#" || i != len(levels)-1) {
			return fmt.Errorf("topic filter %q: # must be the whole last level", f)
		}
		if strings.Contains(l, "+") && l != "+" {
			return fmt.Errorf("topic filter %q: + must be a whole level", f)
		}
	}
	return nil
}

// MatchTopic reports whether an MQTT topic name matches a topic filter
// (MQTT 3.1.1 section 4.7). A filter starting with a wildcard does not match
// topics starting with $ (section 4.7.2).
func MatchTopic(filter, topic string) bool {
	if strings.HasPrefix(topic, "$") && (strings.HasPrefix(filter, "+") || strings.HasPrefix(filter, "#")) {
		return false
	}
	fl := strings.Split(filter, "/")
	tl := strings.Split(topic, "/")
	for i, f := range fl {
		if f == "#" {
			return true // also matches the parent level ("a/#" matches "a")
		}
		if i >= len(tl) {
			return false
		}
		if f != "+" && f != tl[i] {
			return false
		}
	}
	return len(fl) == len(tl)
}
