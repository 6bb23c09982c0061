// Package file feeds a workload.Store from a YAML state file (local mode: the lab, CI, a
// laptop): Parse turns a file into a workload.State, reporting every problem at its line, and
// Source polls a file and applies each new valid version.
//
// # The state file
//
// One YAML document; every field below is known, any other is an error (misspelt or unsupported
// fields are never ignored). Policies have the L4 shape of Istio's AuthorizationPolicy spec,
// flattened beside their name and namespace, with the selector's labels given directly:
//
//	trustDomain: cluster.local
//	rootNamespace: amesh-system    # optional; its policies apply mesh-wide
//	nodes:
//	  - {name: node1, ip: 10.10.0.1}
//	workloads:
//	  - name: web-1
//	    namespace: shop
//	    serviceAccount: web        # with namespace, the SPIFFE ID spiffe://cluster.local/ns/shop/sa/web
//	    node: node1                # must be one of nodes
//	    ips: [10.20.1.2]           # unique across workloads and VIPs
//	    netns: /run/netns/amesh-lab-web-1
//	    mode: ambient              # ambient | none; default ambient
//	    inboundMode: strict        # strict | permissive (plaintext accepted); default strict
//	    labels: {app: web}
//	    # uid: ...                 # optional; default namespace/name
//	    # workloadName: web        # optional, what runs it (its Deployment…); default name
//	    # waypoint: wp             # optional: the waypoint (a service of the namespace) its
//	    #                          # traffic goes through; none to opt out
//	    # allowWaypointBypass: true # optional: accept mesh traffic that skipped the waypoint
//	    # probePorts: [8080]       # kubelet probe ports: plaintext from the node reaches them
//	services:
//	  - name: api
//	    namespace: shop
//	    vips: [10.96.0.10]
//	    ports: [{port: 80, targetPort: 8080}]   # targetPort defaults to port
//	    selector: {app: api}       # endpoints: workloads of the namespace with these labels
//	    # waypoint: wp             # optional, as for workloads
//	    # waypointFor: service     # optional: this service is a waypoint (service | workload |
//	    #                          # all | none), its endpoints the waypoint's pods
//	policies:
//	  - name: api-allow-web
//	    namespace: shop
//	    selector: {app: api}       # absent: every workload of the namespace
//	    action: ALLOW              # ALLOW | DENY; default ALLOW
//	    rules:
//	      - from: [{source: {principals: ["cluster.local/ns/shop/sa/web"]}}]
//	        to: [{operation: {ports: [8080]}}]
//
// A source may set principals, notPrincipals, namespaces and notNamespaces; an operation ports and
// notPorts. testdata/state.yaml is a complete example.
//
// Parse rejects an invalid file whole and reports every problem with its line, like a compiler:
//
//	state.yaml:12: workload shop/web-1: ip "10.0.0.x" is not an IP address
package file
