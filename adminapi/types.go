// Package adminapi is the agent's admin API as its users see it: the JSON of /config_dump (ztunnel's
// names), a client for the API, and the tables ameshctl prints from it.
package adminapi

// ConfigDump is /config_dump: the top-level fields and names of ztunnel's, so tools written
// for its dump parse this one, plus amesh's own (connections, kernelPath).
type ConfigDump struct {
	Workloads    []Workload    `json:"workloads"`
	Services     []Service     `json:"services"`
	Policies     []Policy      `json:"policies"`
	Certificates []Certificate `json:"certificates"`
	Connections  []Connection  `json:"connections"`
	KernelPath   []Connection  `json:"kernelPath"`
}

// Workload is a workload of the cluster as the agent knows it.
type Workload struct {
	UID               string   `json:"uid"`
	WorkloadIPs       []string `json:"workloadIps"`
	Protocol          string   `json:"protocol"`
	Name              string   `json:"name"`
	WorkloadName      string   `json:"workloadName"`
	Namespace         string   `json:"namespace"`
	ServiceAccount    string   `json:"serviceAccount"`
	Node              string   `json:"node"`
	TrustDomain       string   `json:"trustDomain"`
	ClusterID         string   `json:"clusterId"`
	CanonicalName     string   `json:"canonicalName"`
	CanonicalRevision string   `json:"canonicalRevision"`
	Status            string   `json:"status"`
	Waypoint          string   `json:"waypoint,omitempty"`
}

// Service is a service: its VIPs (cluster/ip), ports (service port: target port), endpoints (workload UIDs).
type Service struct {
	Name      string            `json:"name"`
	Namespace string            `json:"namespace"`
	Hostname  string            `json:"hostname"`
	VIPs      []string          `json:"vips"`
	Ports     map[string]uint16 `json:"ports"`
	Endpoints []string          `json:"endpoints"`
}

// Policy is an authorization policy: scope Global, Namespace or WorkloadSelector; action Allow or Deny.
type Policy struct {
	Name      string            `json:"name"`
	Namespace string            `json:"namespace"`
	Scope     string            `json:"scope"`
	Action    string            `json:"action"`
	Selector  map[string]string `json:"selector,omitempty"`
	Rules     any               `json:"rules"`
}

// Certificate is an identity the agent holds an SVID for: state Available or Unavailable.
type Certificate struct {
	Identity string `json:"identity"`
	State    string `json:"state"`
	// Source is who issued it: "builtin" (amesh's CA) or "spire" (the node's SPIRE agent).
	Source string `json:"source,omitempty"`
	// Selectors are what the SVID was asked of SPIRE with.
	Selectors []string `json:"selectors,omitempty"`
	// Detail says why it is Unavailable (no registration entry matches, SPIRE unreachable, ...).
	Detail    string `json:"detail,omitempty"`
	CertChain []Cert `json:"certChain"`
	RootCerts []Cert `json:"rootCerts"`
}

// Cert is one certificate, PEM and its serial and validity (RFC 3339).
type Cert struct {
	PEM            string `json:"pem"`
	SerialNumber   string `json:"serialNumber"`
	ValidFrom      string `json:"validFrom"`
	ExpirationTime string `json:"expirationTime"`
}

// Connection is an open connection the agent decided (relayed) or keeps (kernel path).
type Connection struct {
	Src  string `json:"src"`
	Dst  string `json:"dst"`
	Port uint16 `json:"port,omitempty"`
	Path string `json:"path,omitempty"`
}

// PolicyCheck is /policy_check's answer: what the agent's policy decision says for a
// connection from a principal to a destination, with the agent's state and the agent's function.
type PolicyCheck struct {
	From        string `json:"from"`
	To          string `json:"to"`
	Destination string `json:"destination"`
	Allowed     bool   `json:"allowed"`
	Policy      string `json:"policy,omitempty"`
	Reason      string `json:"reason"`
}
