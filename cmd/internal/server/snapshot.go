package server

import (
	"context"
	"fmt"
	"net/http"

	"github.com/vmsup/vmsup/cmd/internal/api"
	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/driver"
)

// snapshots lists a VM's snapshots.
func (s *Server) snapshots(w http.ResponseWriter, r *http.Request, name string) {
	if _, err := query(r); err != nil {
		writeError(w, err)
		return
	}
	snaps, err := s.drv.Domain(name).Snapshots(r.Context())
	if err != nil {
		writeError(w, err)
		return
	}
	out := make([]api.Snapshot, 0, len(snaps))
	for _, x := range snaps {
		kind := x.Kind
		if kind == "" {
			kind = domain.SnapshotInternal
		}
		out = append(out, api.Snapshot{Name: x.Name, State: x.State, Kind: kind, Created: x.Created, VMState: x.VMState, Disks: x.Disks, Job: x.Job,
			Overlays: x.Overlays, Backing: x.Backing, Frozen: x.Frozen, FrozenFS: x.FrozenFS, FreezeNote: x.FreezeNote})
	}
	writeJSON(w, http.StatusOK, out)
}

// snapshotOp runs a snapshot job on the snapshot named by the path and
// answers the VM's info.
func (s *Server) snapshotOp(op string, do func(*driver.Domain, context.Context, string) error) func(http.ResponseWriter, *http.Request, string) {
	return func(w http.ResponseWriter, r *http.Request, name string) {
		if _, err := query(r); err != nil {
			writeError(w, err)
			return
		}
		snap := r.PathValue("snap")
		if err := domain.ValidateSnapshotName(snap); err != nil {
			writeError(w, badRequest(fmt.Errorf("snapshot %s: %w", op, err)))
			return
		}
		if err := do(s.drv.Domain(name), r.Context(), snap); err != nil {
			writeError(w, err)
			return
		}
		s.writeInfo(w, r.Context(), name)
	}
}
