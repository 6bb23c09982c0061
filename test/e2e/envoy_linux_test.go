//go:build envoy

package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/amesh-dev/amesh/internal/testenv"
)

// TestWaypointEnvoy is TestWaypoint's first checks with a real Envoy as the waypoint, configured
// by amesh-waypoint --xds-only over ADS. No Envoy can be installed on the machines amesh is
// built on, so it is built only with the envoy tag, by `make e2e-envoy`, which needs envoy on
// PATH; it is not part of `make test`. It has not run yet: it is the check to make where an
// Envoy exists.
func TestWaypointEnvoy(t *testing.T) {
	envoy, err := exec.LookPath("envoy")
	if err != nil {
		t.Fatalf("make e2e-envoy needs envoy on PATH: %v", err)
	}
	c := newClusterOf(t, waypointNodes, "--state-poll", "50ms")
	c.writeWaypointState(true)
	const ads = "127.0.0.1:15010"
	xlog := filepath.Join(c.lab.Dir, "waypoint-xds.log")
	x, err := c.lab.Start(context.Background(), c.lab.Pod("wp").Netns, xlog, waypointBin,
		"--state", c.state, "--name", "wp", "--namespace", "shop", "--service-account", "waypoint",
		"--ca-dir", filepath.Join(c.lab.Dir, "ca"), "--xds-addr", ads, "--xds-only")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { x.Kill(); x.Wait() })
	bootstrap, err := exec.Command(waypointBin, "--envoy-bootstrap", "--xds-addr", ads, "--name", "wp", "--namespace", "shop").Output()
	if err != nil {
		t.Fatal(err)
	}
	bf := filepath.Join(c.lab.Dir, "envoy-bootstrap.yaml")
	if err := os.WriteFile(bf, bootstrap, 0o644); err != nil {
		t.Fatal(err)
	}
	e, err := c.lab.Start(context.Background(), c.lab.Pod("wp").Netns, filepath.Join(c.lab.Dir, "envoy.log"), envoy, "-c", bf, "--log-level", "info")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Kill(); e.Wait() })
	const vip = "http://10.96.0.10/"
	testenv.WaitFor(t, "web -> api through Envoy", 30*time.Second, func() bool {
		code, body, err := c.get("web", "GET", vip)
		return err == nil && code == 200 && strings.Contains(body, "hello from api")
	})
	for _, tc := range []struct {
		from, method, url string
		code              int
	}{
		{"web", "GET", vip + "admin", 200},
		{"web", "DELETE", vip + "admin/users", 403},
		{"nosy", "GET", vip, 403},
	} {
		if code, body, err := c.get(tc.from, tc.method, tc.url); err != nil || code != tc.code {
			t.Errorf("%s %s %s through Envoy: %d %q %v; want %d", tc.from, tc.method, tc.url, code, body, err, tc.code)
		}
	}
	if _, body, err := c.get("web", "GET", "http://"+c.lab.Pod("api2").IP.String()+":8080/"); err == nil {
		t.Errorf("web dialled api2 directly, around the Envoy waypoint: %q", body)
	}
}
