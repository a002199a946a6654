package registry

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// JournalName is the file, next to registry.json, that holds the changes
// made since registry.json was last written: one line per write, each the
// whole new value (or the deletion) of every record that changed, so a
// write costs the records it changed, not the whole registry (issue 15: a
// lab of 10,000 devices). registry.json is rewritten (compaction) when the
// journal grows past it, or after a change no record key describes
// (touch). A crash can tear only the last line, which Open drops: the
// changes of the write in flight are lost, never a half of them.
const JournalName = "registry.journal"

// compactMin is the least journal size that triggers a compaction.
var compactMin int64 = 1 << 20

// Record kinds of the journal (the maps of state they stand for).
const (
	recCert            = "cert"            // Certs[key]
	recThing           = "thing"           // Things[key]
	recMembers         = "members"         // Members[group]
	recPolicyTargets   = "policyTargets"   // PolicyTargets[policy]
	recThingPrincipals = "thingPrincipals" // ThingPrincipals[thing]
	recExclusive       = "exclusive"       // Exclusive[principal]
	recExecs           = "execs"           // Execs[thing]
	recJob             = "job"             // Jobs[id]
)

type recKey struct{ kind, key string }

// journalRec is one record's new value; Value null: deleted.
type journalRec struct {
	Kind  string          `json:"k"`
	Key   string          `json:"id"`
	Value json.RawMessage `json:"v"`
}

// journalBatch is one line: the records one write changed.
type journalBatch struct {
	Seq  uint64       `json:"seq"`
	Recs []journalRec `json:"recs"`
}

// touchRec marks one record changed: the next write journals it alone.
func (r *Registry) touchRec(kind, key string) {
	r.changed = true
	if r.dirty == nil {
		r.dirty = map[recKey]bool{}
	}
	r.dirty[recKey{kind, key}] = true
}

// recValueLocked marshals the current value of a record (null when gone).
func (r *Registry) recValueLocked(k recKey) (json.RawMessage, error) {
	var v any
	var ok bool
	switch k.kind {
	case recCert:
		v, ok = r.st.Certs[k.key]
	case recThing:
		v, ok = r.st.Things[k.key]
	case recMembers:
		v, ok = r.st.Members[k.key]
	case recPolicyTargets:
		v, ok = r.st.PolicyTargets[k.key]
	case recThingPrincipals:
		v, ok = r.st.ThingPrincipals[k.key]
	case recExclusive:
		v, ok = r.st.Exclusive[k.key]
	case recExecs:
		v, ok = r.st.Execs[k.key]
	case recJob:
		v, ok = r.st.Jobs[k.key]
	default:
		return nil, fmt.Errorf("journal: unknown record kind %q", k.kind)
	}
	if !ok {
		return json.RawMessage("null"), nil
	}
	return json.Marshal(v)
}

func setRec[T any](m map[string]T, key string, raw json.RawMessage) error {
	if bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
		delete(m, key)
		return nil
	}
	var v T
	if err := json.Unmarshal(raw, &v); err != nil {
		return err
	}
	m[key] = v
	return nil
}

// apply sets one journalled record in st.
func (st *state) apply(rec journalRec) error {
	var err error
	switch rec.Kind {
	case recCert:
		err = setRec(st.Certs, rec.Key, rec.Value)
	case recThing:
		err = setRec(st.Things, rec.Key, rec.Value)
	case recMembers:
		err = setRec(st.Members, rec.Key, rec.Value)
	case recPolicyTargets:
		err = setRec(st.PolicyTargets, rec.Key, rec.Value)
	case recThingPrincipals:
		err = setRec(st.ThingPrincipals, rec.Key, rec.Value)
	case recExclusive:
		err = setRec(st.Exclusive, rec.Key, rec.Value)
	case recExecs:
		err = setRec(st.Execs, rec.Key, rec.Value)
	case recJob:
		err = setRec(st.Jobs, rec.Key, rec.Value)
	default:
		err = fmt.Errorf("unknown record kind %q", rec.Kind)
	}
	if err != nil {
		return fmt.Errorf("record %s %q: %w", rec.Kind, rec.Key, err)
	}
	return nil
}

// replayJournal applies the journal's batches newer than st.Seq. A last
// line without its newline (a write torn by a crash) is dropped and cut
// off the file; any other bad line is an error naming it.
func replayJournal(path string, st *state) (size int64, err error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("loading lab registry journal: %w", err)
	}
	good := 0
	for line := 1; good < len(data); line++ {
		nl := bytes.IndexByte(data[good:], '\n')
		if nl < 0 { // torn last write
			if err := os.Truncate(path, int64(good)); err != nil {
				return 0, fmt.Errorf("cutting the torn last line of %s: %w", path, err)
			}
			break
		}
		var b journalBatch
		if err := json.Unmarshal(data[good:good+nl], &b); err != nil {
			return 0, fmt.Errorf("loading lab registry journal %s: line %d: %w (move registry.json and the journal away to start empty)", path, line, err)
		}
		if b.Seq > st.Seq {
			for _, rec := range b.Recs {
				if err := st.apply(rec); err != nil {
					return 0, fmt.Errorf("loading lab registry journal %s: line %d: %w", path, line, err)
				}
			}
			st.Seq = b.Seq
		}
		good += nl + 1
	}
	return int64(good), nil
}

// openJournal opens the journal for appending.
func (r *Registry) openJournal(dir string) error {
	f, err := os.OpenFile(filepath.Join(dir, JournalName), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("opening lab registry journal: %w", err)
	}
	r.journal = f
	return nil
}

// appendJournal writes one batch line and syncs it.
func (r *Registry) appendJournal(b journalBatch) error {
	line, err := json.Marshal(b)
	if err != nil {
		return err
	}
	line = append(line, '\n')
	if _, err := r.journal.Write(line); err != nil {
		return err
	}
	if err := r.journal.Sync(); err != nil {
		return err
	}
	r.journalSize += int64(len(line))
	return nil
}

// resetJournal empties the journal after registry.json took its changes.
func (r *Registry) resetJournal() error {
	if r.journal == nil {
		return nil
	}
	if err := r.journal.Truncate(0); err != nil {
		return err
	}
	r.journalSize = 0
	return r.journal.Sync()
}
