package cniv1

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
)

type okServer struct {
	UnimplementedEnrollmentServer
}

func (okServer) AddPod(_ context.Context, r *AddPodRequest) (*AddPodReply, error) {
	return &AddPodReply{Enrolled: true, Detail: r.GetPod().GetName()}, nil
}

func TestDial(t *testing.T) {
	dir := t.TempDir()

	serving := filepath.Join(dir, "serving.sock")
	l, err := net.Listen("unix", serving)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	RegisterEnrollmentServer(srv, okServer{})
	go srv.Serve(l)
	t.Cleanup(srv.Stop)

	// A socket file nobody listens on any more, as a killed agent leaves it.
	stale := filepath.Join(dir, "stale.sock")
	sl, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	sl.(*net.UnixListener).SetUnlinkOnClose(false)
	sl.Close()

	// Accepts, but never speaks HTTP/2: only ctx ends the wait.
	mute := filepath.Join(dir, "mute.sock")
	ml, err := net.Listen("unix", mute)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ml.Close() })
	go func() {
		for {
			c, err := ml.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()

	for _, tt := range []struct {
		name    string
		path    string
		wantErr error // nil: Dial succeeds and AddPod answers
	}{
		{"serving", serving, nil},
		{"missing socket", filepath.Join(dir, "none.sock"), syscall.ENOENT},
		{"stale socket", stale, syscall.ECONNREFUSED},
		{"not a gRPC server", mute, context.DeadlineExceeded},
	} {
		t.Run(tt.name, func(t *testing.T) {
			// A socket that cannot answer must fail at once, not be retried until the deadline:
			// with a deadline far beyond any scheduling delay of a loaded machine, a retrying Dial
			// would end in DeadlineExceeded after it (and take at least half of it).
			timeout := 500 * time.Millisecond
			if tt.wantErr != nil && tt.wantErr != context.DeadlineExceeded {
				timeout = 20 * time.Second
			}
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			start := time.Now()
			conn, err := Dial(ctx, tt.path)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Dial(%s) = %v, want an error wrapping %v", tt.path, err, tt.wantErr)
				}
				if tt.wantErr != context.DeadlineExceeded && time.Since(start) > timeout/2 {
					t.Errorf("Dial(%s) took %v to fail: it was retried, want at once", tt.path, time.Since(start))
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			r, err := NewEnrollmentClient(conn).AddPod(ctx, &AddPodRequest{Pod: &PodRef{Namespace: "shop", Name: "web"}})
			if err != nil || !r.GetEnrolled() || r.GetDetail() != "web" {
				t.Fatalf("AddPod = %v, %v", r, err)
			}
		})
	}
}
