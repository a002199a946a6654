package api

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

type request struct {
	http  *http.Request
	vars  map[string]string
	query url.Values
	body  []byte
	res   string
}

func (q *request) v(name string) string {
	val := q.vars[name]
	if q.res == "" {
		q.res = val
	}
	return val
}

func (q *request) resource() string { return q.res }

// decodeBody decodes a JSON object body into dst. An empty body decodes as
// {}; anything but one JSON object is InvalidRequestException. Unknown
// fields are ignored (the SDK may send members the lab does not model, like
// tags).
func decodeBody(body []byte, dst any) error {
	b := bytes.TrimSpace(body)
	if len(b) == 0 {
		return nil
	}
	if b[0] != '{' {
		return errInvalid("request body must be a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(dst); err != nil {
		return errInvalid("request body: %v", err)
	}
	if dec.More() {
		return errInvalid("request body: trailing data after the JSON object")
	}
	return nil
}

func (q *request) decode(dst any) error { return decodeBody(q.body, dst) }

func (q *request) boolQuery(name string) (bool, error) {
	s := q.query.Get(name)
	if s == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(s)
	if err != nil {
		return false, errInvalid("query parameter %s: want true or false, got %q", name, s)
	}
	return b, nil
}

func (q *request) intQuery(name string) (*int64, error) {
	s := q.query.Get(name)
	if s == "" {
		return nil, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return nil, errInvalid("query parameter %s: want an integer, got %q", name, s)
	}
	return &n, nil
}

// epoch renders a timestamp as the epoch seconds the SDK decodes; zero
// times are omitted.
func epoch(t time.Time) *float64 {
	if t.IsZero() {
		return nil
	}
	f := float64(t.UnixMilli()) / 1000
	return &f
}

// Default and maximum page sizes of the List operations.
const (
	defaultPage = 25
	maxPage     = 250
)

// page returns one page of items and the token of the next (an offset).
func page[T any](items []T, token string, max *int64) ([]T, string, error) {
	start := 0
	if token != "" {
		n, err := strconv.Atoi(token)
		if err != nil || n < 0 || n > len(items) {
			return nil, "", errInvalid("invalid nextToken %q", token)
		}
		start = n
	}
	size := defaultPage
	if max != nil {
		if *max < 1 || *max > maxPage {
			return nil, "", errInvalid("maxResults must be 1 to %d", maxPage)
		}
		size = int(*max)
	}
	end := min(start+size, len(items))
	next := ""
	if end < len(items) {
		next = strconv.Itoa(end)
	}
	out := items[start:end]
	if out == nil {
		out = []T{}
	}
	return out, next, nil
}

// pageOf returns the page of items a list request asks for: maxResults and
// nextToken, or with marker pageSize and marker (ListCertificates,
// ListPolicies and the other older operations); next is nil on the last page.
func pageOf[T any](q *request, items []T, marker bool) (pg []T, next *string, err error) {
	sizeParam, tokenParam := "maxResults", "nextToken"
	if marker {
		sizeParam, tokenParam = "pageSize", "marker"
	}
	size, err := q.intQuery(sizeParam)
	if err != nil {
		return nil, nil, err
	}
	pg, tok, err := page(items, q.query.Get(tokenParam), size)
	return pg, strPtr(tok), err
}

// listReply answers a list request with one page of items under key, and
// nextToken (nextMarker with marker) when there are more.
func listReply[T any](q *request, key string, items []T, marker bool) (any, error) {
	pg, next, err := pageOf(q, items, marker)
	if err != nil {
		return nil, err
	}
	nextKey := "nextToken"
	if marker {
		nextKey = "nextMarker"
	}
	return map[string]any{key: pg, nextKey: next}, nil
}

func strPtr(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}
