package agent

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/amesh-dev/amesh/workload"
)

// TestSourceHoldsIdentity: an HBONE client's certificate must be the identity of the workload
// at the address it connects from. The CA key is on every node (built-in CA), so a
// compromised node can mint any SVID; binding identity to address keeps it to the identities of
// the pods it really hosts.
func TestSourceHoldsIdentity(t *testing.T) {
	ip := netip.MustParseAddr
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	st, err := workload.NewState(workload.Spec{
		TrustDomain: td,
		Nodes:       []workload.Node{{Name: "n1", IP: ip("10.250.0.1")}, {Name: "n2", IP: ip("10.250.0.2")}},
		Workloads: []workload.Workload{
			{Name: "web", Namespace: "shop", ServiceAccount: "web", Node: "n1", IPs: []netip.Addr{ip("10.20.1.2"), ip("fd00::1:2")}},
			{Name: "api", Namespace: "shop", ServiceAccount: "api", Node: "n2", IPs: []netip.Addr{ip("10.20.2.3")}},
			{Name: "legacy", Namespace: "old", ServiceAccount: "default", Node: "n2", IPs: []netip.Addr{ip("10.20.2.9")}, Mode: workload.ModeNone},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	web := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/web")
	api := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/api")
	tests := []struct {
		name    string
		client  string
		peer    spiffeid.ID
		wantErr string // "" means admitted
	}{
		{"the workload's own identity from its IP", "10.20.1.2", web, ""},
		{"from its second IP", "fd00::1:2", web, ""},
		{"IPv4-mapped source", "::ffff:10.20.1.2", web, ""},
		{"another workload's identity from its IP", "10.20.1.2", api, "is the address of shop/web"},
		{"a node's address", "10.250.0.1", web, "no workload of the mesh has the address"},
		{"an unknown address", "192.0.2.7", web, "no workload of the mesh has the address"},
		{"an unmeshed pod's address", "10.20.2.9", web, "is the address of old/legacy"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := sourceHolds(st, ip(tt.client), tt.peer)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("sourceHolds = %v, want an error with %q", err, tt.wantErr)
			}
		})
	}
}
