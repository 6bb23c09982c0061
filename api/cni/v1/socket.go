// Package cniv1 is the enrollment API between amesh-cni, the chained CNI plugin, and amesh-agent,
// the node agent that serves it on a unix socket (DESIGN.md §6). cni.proto is the contract;
// cni.pb.go and cni_grpc.pb.go are generated from it by `go generate` (gen.sh, with the protoc
// plugins pinned in go.mod's tool block) and committed.
//
// The socket carries no TLS and no authentication: its file permissions are the access control.
// The agent must create it with mode 0600 in a directory only root can enter (DefaultSocket's
// /var/run/amesh, mode 0700), so that only root on the node — the container runtime, which runs
// the CNI plugin, and the agent itself — can enroll or forget a pod. Whoever can connect to the
// socket can take pods in and out of the mesh: never mount it into a pod other than the agent's.
package cniv1

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
)

// DefaultSocket is where the agent serves Enrollment unless told otherwise, on the node's
// filesystem (the DaemonSet mounts the host's /var/run/amesh into the agent).
const DefaultSocket = "/var/run/amesh/cni.sock"

// Dial connects to the Enrollment server on the unix socket at socketPath and returns once the
// connection is ready, so a missing socket or a refused connection is an error of Dial itself,
// right away, not of the first call; ctx bounds the wait. The caller closes the connection.
//
// The connection uses insecure credentials on purpose: see the package comment.
func Dial(ctx context.Context, socketPath string) (*grpc.ClientConn, error) {
	var (
		mu      sync.Mutex
		dialErr error // the last dial's error, to say why the connection failed
	)
	dialer := func(ctx context.Context, _ string) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", socketPath)
		mu.Lock()
		dialErr = err
		mu.Unlock()
		return c, err
	}
	// passthrough: the target is only a name; the dialer ignores it and dials the socket.
	conn, err := grpc.NewClient("passthrough:///amesh-agent",
		grpc.WithContextDialer(dialer),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("cniv1: agent client for %s: %w", socketPath, err)
	}
	conn.Connect()
	for {
		s := conn.GetState()
		switch s {
		case connectivity.Ready:
			return conn, nil
		case connectivity.TransientFailure, connectivity.Shutdown:
			conn.Close()
			mu.Lock()
			err := dialErr
			mu.Unlock()
			if err == nil {
				err = errors.New("connection failed after connecting (is a gRPC Enrollment server serving it?)")
			}
			return nil, fmt.Errorf("cniv1: connect to the amesh agent at %s: %w", socketPath, err)
		}
		if !conn.WaitForStateChange(ctx, s) {
			conn.Close()
			return nil, fmt.Errorf("cniv1: connect to the amesh agent at %s: %w", socketPath, ctx.Err())
		}
	}
}
