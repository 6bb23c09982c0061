package xds

import (
	"context"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/amesh-dev/amesh/identity"
	"github.com/amesh-dev/amesh/waypoint"
	"github.com/amesh-dev/amesh/workload"
)

// Follow serves the Envoy configuration of waypoint namespace/name, whose pods are id, from
// every state of store until ctx is done: a new snapshot on each state, and on each rotation of
// the waypoint's SVID (Envoy receives its certificate over SDS, so a rotation must be Set). A
// state that does not translate keeps the last good snapshot and is logged.
func (s *Server) Follow(ctx context.Context, store *workload.Store, namespace, name string, src identity.Source, id spiffeid.ID) {
	opts := Options{SVID: sourceSVID{src: src, id: id}, Bundles: src}
	set := func(st *workload.State) {
		cfg, err := waypoint.Build(st, namespace, name, id)
		if err == nil {
			err = s.Set(ctx, cfg, opts)
		}
		if err != nil {
			s.log.Warn("waypoint config not served; the last good one stays", "waypoint", namespace+"/"+name, "err", err)
		}
	}
	updates, cancel := store.Subscribe()
	defer cancel()
	rotated, stop := src.Watch(id)
	defer stop()
	for { // the first update is the current state
		select {
		case <-ctx.Done():
			return
		case st := <-updates:
			set(st)
		case <-rotated:
			set(store.Load())
		}
	}
}

// sourceSVID is the waypoint's current SVID from an identity.Source.
type sourceSVID struct {
	src identity.Source
	id  spiffeid.ID
}

// GetX509SVID returns the SVID held (issued the first time, within 10 s).
func (s sourceSVID) GetX509SVID() (*x509svid.SVID, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	svid, err := s.src.SVID(ctx, s.id)
	if err != nil {
		return nil, fmt.Errorf("xds: the waypoint's SVID: %w", err)
	}
	return svid, nil
}
