package cniplugin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	cniv1 "github.com/amesh-dev/amesh/api/cni/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// unreachableError says the agent could not be asked: no socket, nobody listening on it, or no
// answer within the call's budget. The plugin then decides on its own whether the pod may start
// (see unreachableVerdict). An error the agent answered is not one: that is the agent's word.
type unreachableError struct {
	socket string
	budget time.Duration // how long the call was given
	err    error
}

func (e *unreachableError) Error() string {
	if e.noAnswer() {
		return fmt.Sprintf("the amesh agent on this node did not answer at %s within %v", e.socket, e.budget)
	}
	var op *net.OpError
	if errors.As(e.err, &op) && op.Err != nil {
		// "connect: no such file or directory", without the address the message names already.
		return fmt.Sprintf("the amesh agent on this node is not reachable at %s (%v)", e.socket, op.Err)
	}
	return fmt.Sprintf("the amesh agent on this node is not reachable at %s (%v)", e.socket, e.err)
}

func (e *unreachableError) Unwrap() error { return e.err }

func (e *unreachableError) noAnswer() bool {
	return errors.Is(e.err, context.DeadlineExceeded) || status.Code(e.err) == codes.DeadlineExceeded
}

// callAgent dials the agent's socket and makes one call, all within budget. The error is an
// *unreachableError when the agent could not be asked or did not answer in time, else the
// agent's answer (a gRPC status), whatever its code: an agent that answers Unavailable ("not
// enrolled in time: retry") has been reached, and its message is the one kubelet should show.
// A connection that breaks during the call is reported the same way (Unavailable), which fails
// the call: safe, and kubelet retries.
func callAgent[R any](ctx context.Context, socket string, budget time.Duration, call func(context.Context, cniv1.EnrollmentClient) (R, error)) (R, error) {
	var zero R
	ctx, cancel := context.WithTimeout(ctx, budget)
	defer cancel()
	conn, err := cniv1.Dial(ctx, socket)
	if err != nil {
		return zero, &unreachableError{socket: socket, budget: budget, err: err}
	}
	defer conn.Close()
	r, err := call(ctx, cniv1.NewEnrollmentClient(conn))
	// DeadlineExceeded even before ctx says so: the agent's copy of the deadline (grpc-timeout)
	// can run out a moment before ours.
	if err != nil && (ctx.Err() != nil || status.Code(err) == codes.DeadlineExceeded) {
		return zero, &unreachableError{socket: socket, budget: budget, err: err}
	}
	return r, err
}

// agentBudget is the part of a call's timeout the agent gets, so that when it does not answer
// there is still time to ask the API server whether the pod may start without it.
func agentBudget(timeout time.Duration) time.Duration { return timeout * 3 / 4 }
