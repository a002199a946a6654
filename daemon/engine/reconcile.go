package engine

import (
	"context"
	"errors"
	"fmt"

	"github.com/bootcert/bootcert/daemon/credset"
	"github.com/bootcert/bootcert/daemon/journal"
	"github.com/bootcert/bootcert/keystore"
	"github.com/bootcert/bootcert/protocol"
)

// reconcile brings journal, pointer and stored generations into agreement
// after a start (or a crash): every crash point of a transition
// (phases.go) leaves one of the states handled here.
func (e *Engine) reconcile(ctx context.Context) error {
	// what is on disk first: status shows the committed generation even
	// when the key checks below wait for hardware that does not answer
	e.refreshStatus()
	if err := e.store.Cleanup(); err != nil {
		e.log.Warn("removing leftovers of interrupted credential writes", "err", err)
	}
	if err := e.upgradeJournal(); err != nil {
		return err
	}
	j := e.journal.Current()
	ptr, err := e.store.Pointer()
	if err != nil {
		e.log.Error("active pointer unreadable; using the bootstrap credential", "err", err)
		ptr = credset.Pointer{}
		if err := e.store.SetPointer(ptr); err != nil {
			return err
		}
	}
	switch j.Phase {
	case journal.CertStaged:
		if ptr.Active == j.Generation { // swapped, crashed before the journal write
			j.Phase = journal.Switched
			if err := e.journal.Write(j); err != nil {
				return err
			}
		} else if _, err := e.store.Get(j.Generation); err != nil { // never staged: start over
			if err := e.journal.Write(journal.Entry{Phase: journal.Idle, Generation: j.Generation, JobID: j.JobID, Result: protocol.JobFailed, Reason: "staged certificate lost"}); err != nil {
				return err
			}
		}
	case journal.Switched:
		if ptr.Active != j.Generation {
			if err := e.store.SetPointer(credset.Pointer{Active: j.Generation, Previous: j.Previous}); err != nil {
				return err
			}
		}
	case journal.RolledBack:
		if ptr.Active != j.Previous {
			if err := e.store.SetPointer(credset.Pointer{Active: j.Previous}); err != nil {
				return err
			}
		}
	}
	// generations nobody points at are leftovers of interrupted rotations
	j = e.journal.Current()
	ptr, _ = e.store.Pointer()
	gens, err := e.store.Generations()
	if err != nil {
		e.log.Warn("listing credential generations", "err", err)
	}
	for _, g := range gens {
		if g == ptr.Active || g == ptr.Previous || (!idle(j.Phase) && g == j.Generation) || (j.Phase == journal.Committed && g == j.Previous) {
			continue
		}
		e.log.Info("removing unreferenced credential generation", "generation", g)
		e.removeGeneration(g, "unreferenced")
	}
	if ptr.Active > 0 && j.Phase != journal.Switched {
		c, err := e.store.Get(ptr.Active)
		if err == nil {
			signer, oerr := e.openKey(ctx, c.KeyURI)
			if oerr == nil {
				keystore.CloseSigner(signer)
			}
			err = oerr
		}
		if errors.Is(err, keystore.ErrNotFound) || errors.Is(err, credset.ErrNotFound) {
			e.log.Error("active operational credential is gone; falling back to the bootstrap credential", "generation", ptr.Active, "err", err)
			e.setError(fmt.Sprintf("operational credential generation %d missing (%v); using the bootstrap certificate", ptr.Active, err), adviceKeyGone)
			if err := e.store.SetPointer(credset.Pointer{}); err != nil {
				return err
			}
		}
	}
	e.refreshStatus()
	return nil
}

// upgradeJournal records the key's role and the mode in a rotation
// journalled before they were recorded (Entry.Legacy): the one place they
// are worked out from the configuration.
func (e *Engine) upgradeJournal() error {
	j := e.journal.Current()
	if !j.Legacy() {
		return nil
	}
	j.KeyRole = credset.RoleStaged
	j.Mode = credset.ModeOnDemand
	if e.cfg.PreProvisionedKey != "" && j.KeyURI == e.cfg.PreProvisionedKey {
		j.Mode = credset.ModePreProvisioned
	}
	e.log.Info("journal of an earlier version: recording the key's role and the mode", "phase", j.Phase, "mode", j.Mode)
	return e.journal.Write(j)
}
