package kube

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/amesh-dev/amesh/internal/intern"
	"github.com/amesh-dev/amesh/policy"
	"github.com/amesh-dev/amesh/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// The labels a user sets, as in Istio ambient (istio.io/dataplane-mode, istio.io/use-waypoint).
const (
	// LabelDataplaneMode on a namespace ("ambient") puts its pods in the mesh; on a pod, "none"
	// takes it out and "ambient" puts it in whatever its namespace says.
	LabelDataplaneMode = "amesh.io/dataplane-mode"
	// LabelUseWaypoint on a namespace, pod or service names the waypoint its traffic goes through.
	// "none" on a pod or service keeps it off its namespace's waypoint.
	LabelUseWaypoint = "amesh.io/use-waypoint"
	// LabelWaypointFor on a Service makes it a waypoint (its endpoints are the waypoint's pods)
	// and says which traffic it takes: service (Istio's default), workload, all or none.
	LabelWaypointFor = "amesh.io/waypoint-for"
	// LabelAllowWaypointBypass ("true") on a namespace or pod accepts mesh traffic that
	// skipped the pod's waypoints, as Istio does; unset, only the waypoint may send it traffic
	// for the ports the waypoint covers.
	LabelAllowWaypointBypass = "amesh.io/allow-waypoint-bypass"
	// LabelInboundMode on a namespace or pod ("permissive") lets plaintext in besides HBONE; the
	// default is strict.
	LabelInboundMode = "amesh.io/inbound-mode"
)

// Objects is what the Kubernetes source reads from the API server; Spec turns it into a
// workload.Spec.
type Objects struct {
	Namespaces     []*corev1.Namespace
	Pods           []*corev1.Pod
	Services       []*corev1.Service
	EndpointSlices []*discoveryv1.EndpointSlice
	// Policies are AuthorizationPolicy objects (security.amesh.io/v1), as the dynamic client
	// returns them.
	Policies []*unstructured.Unstructured
	// Routes are HTTPRoute objects (gateway.networking.k8s.io/v1), as the dynamic client
	// returns them; nil when Gateway API is not installed.
	Routes []*unstructured.Unstructured
	// PodIPs are IPs the agent learnt from the CNI plugin, by pod UID: a pod being created has
	// them before its status.podIPs says so (the kubelet writes status after CNI ADD returns).
	PodIPs map[string][]netip.Addr

	// infos are the pods as the Source's informer keeps them (used instead of Pods when set).
	infos []*podInfo
}

// podInfos returns the pods as podInfos (infos, or those made of Pods) in a new slice.
func (o Objects) podInfos() []*podInfo {
	if o.infos != nil {
		return slices.Clone(o.infos)
	}
	infos := make([]*podInfo, 0, len(o.Pods))
	for _, pod := range o.Pods {
		infos = append(infos, infoOf(pod))
	}
	return infos
}

// Spec converts the cluster's objects into a workload.Spec that workload.NewState accepts: objects amesh cannot
// represent are left out (pods without an IP or node yet, host-network pods, headless services)
// and conflicts are settled the way the cluster itself would (of two pods with one IP, the newer
// is the live one). Each object left out for a reason a user should know, and each invalid
// AuthorizationPolicy, is reported in problems; an invalid policy is not dropped but replaced by
// one that denies every connection to the workloads it selects, so a typo never opens access.
func Spec(td spiffeid.TrustDomain, rootNS string, objs Objects) (spec workload.Spec, problems []error) {
	spec = workload.Spec{TrustDomain: td, RootNamespace: rootNS}
	nsLabels := make(map[string]map[string]string, len(objs.Namespaces))
	for _, ns := range objs.Namespaces {
		nsLabels[ns.Name] = ns.Labels
	}

	// Pods: newest first, so that the newer of two pods claiming one IP wins.
	pods := objs.podInfos()
	slices.SortFunc(pods, newerPodFirst)
	takenIP := map[netip.Addr]string{}
	nodeIP := map[string]netip.Addr{}
	nodeOfIP := map[netip.Addr]string{}
	for _, pod := range pods {
		w, ok := podWorkload(pod, nsLabels[pod.Namespace], objs.PodIPs[string(pod.UID)])
		if !ok {
			continue
		}
		ips, _, errs := keepFreeIPs(pod.Namespace+"/"+pod.Name, w.IPs, takenIP)
		problems = append(problems, errs...)
		if len(ips) == 0 {
			continue
		}
		w.IPs = ips
		if known := nodeIP[w.Node]; !known.IsValid() && w.HostIP.IsValid() {
			if other, dup := nodeOfIP[w.HostIP]; dup && other != w.Node {
				problems = append(problems, fmt.Errorf("node %s: host ip %s is also node %s's", w.Node, w.HostIP, other))
				w.HostIP = netip.Addr{}
			} else {
				nodeIP[w.Node], nodeOfIP[w.HostIP] = w.HostIP, w.Node
			}
		} else if _, seen := nodeIP[w.Node]; !seen {
			nodeIP[w.Node] = netip.Addr{} // known by name until a pod tells its IP
		}
		spec.Workloads = append(spec.Workloads, w)
	}
	for name, ip := range nodeIP {
		spec.Nodes = append(spec.Nodes, workload.Node{Name: name, IP: ip})
	}
	slices.SortFunc(spec.Nodes, func(a, b workload.Node) int { return cmp.Compare(a.Name, b.Name) })

	slicesBySvc := map[string][]*discoveryv1.EndpointSlice{}
	for _, es := range objs.EndpointSlices {
		if svc := es.Labels[discoveryv1.LabelServiceName]; svc != "" {
			k := es.Namespace + "/" + svc
			slicesBySvc[k] = append(slicesBySvc[k], es)
		}
	}
	// Services by namespace/name, so that of two claiming one VIP the same one wins on every
	// node whatever order its informer lists them in.
	svcs := slices.Clone(objs.Services)
	slices.SortFunc(svcs, func(a, b *corev1.Service) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	for _, svc := range svcs {
		s, errs := service(svc, nsLabels[svc.Namespace], slicesBySvc[svc.Namespace+"/"+svc.Name], takenIP)
		problems = append(problems, errs...)
		if s == nil {
			continue
		}
		for _, vip := range s.VIPs {
			takenIP[vip] = "service " + s.Key()
		}
		spec.Services = append(spec.Services, *s)
	}

	for _, u := range objs.Policies {
		p, err := Policy(u)
		if err != nil {
			problems = append(problems, err)
		}
		spec.Policies = append(spec.Policies, p)
	}
	for _, u := range objs.Routes {
		r, ok, err := Route(u)
		if err == nil && ok {
			err = workload.ValidateRoute(r)
		}
		switch {
		case err != nil:
			problems = append(problems, err)
		case ok:
			spec.Routes = append(spec.Routes, r)
		}
	}
	return spec, problems
}

// podInfo is what amesh reads of a pod, and all the Source's informer keeps of one (a
// corev1.Pod is ~2 KiB of Go memory before any of its strings; every agent caches every pod of
// the cluster): its owner and probe ports resolved when it is stored. The ObjectMeta holds
// name, namespace, UID, labels, creation time and resource version only; the informer's store
// keys objects by it.
type podInfo struct {
	metav1.ObjectMeta
	serviceAccount, node string
	owner                string // ownerName
	phase                corev1.PodPhase
	hostNetwork          bool
	podIPs               []string // status.podIPs
	podIP, hostIP        string
	probePorts           []uint16
}

// infoOf makes pod's podInfo.
func infoOf(pod *corev1.Pod) *podInfo {
	p := &podInfo{
		ObjectMeta: metav1.ObjectMeta{
			Name: pod.Name, Namespace: intern.String(pod.Namespace), UID: pod.UID, ResourceVersion: pod.ResourceVersion,
			Labels: intern.Labels(pod.Labels), CreationTimestamp: pod.CreationTimestamp,
		},
		serviceAccount: intern.String(pod.Spec.ServiceAccountName), node: intern.String(pod.Spec.NodeName),
		owner: intern.String(ownerName(pod)), phase: corev1.PodPhase(intern.String(string(pod.Status.Phase))),
		hostNetwork: pod.Spec.HostNetwork, podIP: pod.Status.PodIP, hostIP: intern.String(pod.Status.HostIP), probePorts: probePorts(pod),
	}
	for _, pip := range pod.Status.PodIPs {
		p.podIPs = append(p.podIPs, pip.IP)
	}
	return p
}

// newerPodFirst orders pods as their IPs are settled: the newer first, then by namespace/name.
func newerPodFirst(a, b *podInfo) int {
	if c := b.CreationTimestamp.Compare(a.CreationTimestamp.Time); c != 0 {
		return c
	}
	return cmp.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
}

// keepFreeIPs settles the IPs the pod at key claims against those newer pods took (taken, by
// IP the key of the pod that keeps it): it returns those it keeps, now taken for it, and those
// it loses, each reported.
func keepFreeIPs(key string, ips []netip.Addr, taken map[netip.Addr]string) (kept, lost []netip.Addr, problems []error) {
	for _, ip := range ips {
		if other, dup := taken[ip]; dup {
			problems = append(problems, fmt.Errorf("pod %s: ip %s is also pod %s's (the newer pod keeps it)", key, ip, other))
			lost = append(lost, ip)
			continue
		}
		kept = append(kept, ip)
	}
	for _, ip := range kept {
		taken[ip] = key
	}
	return kept, lost, problems
}

// podIPs returns the IPs the pod claims as a workload: its status's, else the CNI plugin's;
// none for pods amesh does not represent (host network, not scheduled, finished) or without
// an IP yet.
func podIPs(pod *podInfo, cniIPs []netip.Addr) []netip.Addr {
	if pod.hostNetwork || pod.node == "" || pod.phase == corev1.PodSucceeded || pod.phase == corev1.PodFailed {
		return nil
	}
	var ips []netip.Addr
	for _, s := range pod.podIPs {
		if ip, err := netip.ParseAddr(s); err == nil {
			ips = append(ips, ip.Unmap())
		}
	}
	if len(ips) == 0 && pod.podIP != "" {
		if ip, err := netip.ParseAddr(pod.podIP); err == nil {
			ips = append(ips, ip.Unmap())
		}
	}
	if len(ips) == 0 {
		ips = slices.Clone(cniIPs)
	}
	return ips
}

// podWorkload converts a pod; ok is false for pods amesh does not represent.
func podWorkload(pod *podInfo, nsLabels map[string]string, cniIPs []netip.Addr) (workload.Workload, bool) {
	ips := podIPs(pod, cniIPs)
	if len(ips) == 0 {
		return workload.Workload{}, false // not represented, or no IP yet: its sandbox is not set up
	}
	w := workload.Workload{
		UID: string(pod.UID), Name: pod.Name, WorkloadName: pod.owner, Namespace: pod.Namespace,
		ServiceAccount: cmp.Or(pod.serviceAccount, "default"),
		Node:           pod.node, Labels: pod.Labels,
		Mode:                workload.ModeNone,
		InboundMode:         workload.InboundStrict,
		Waypoint:            cmp.Or(pod.Labels[LabelUseWaypoint], nsLabels[LabelUseWaypoint]),
		AllowWaypointBypass: cmp.Or(pod.Labels[LabelAllowWaypointBypass], nsLabels[LabelAllowWaypointBypass]) == "true",
	}
	if w.UID == "" {
		w.UID = pod.Namespace + "/" + pod.Name
	}
	switch pod.Labels[LabelDataplaneMode] {
	case "none":
	case "ambient":
		w.Mode = workload.ModeAmbient
	default:
		if nsLabels[LabelDataplaneMode] == "ambient" {
			w.Mode = workload.ModeAmbient
		}
	}
	if cmp.Or(pod.Labels[LabelInboundMode], nsLabels[LabelInboundMode]) == "permissive" {
		w.InboundMode = workload.InboundPermissive
	}
	w.IPs = ips
	if ip, err := netip.ParseAddr(pod.hostIP); err == nil {
		w.HostIP = ip.Unmap()
	}
	w.ProbePorts = slices.Clone(pod.probePorts)
	return w, true
}

// probePorts returns the sorted, distinct ports of the pod's kubelet probes, named ports resolved
// against the container's ports.
func probePorts(pod *corev1.Pod) []uint16 {
	var out []uint16
	for _, c := range pod.Spec.Containers {
		for _, pr := range []*corev1.Probe{c.LivenessProbe, c.ReadinessProbe, c.StartupProbe} {
			if pr == nil {
				continue
			}
			var port intstr.IntOrString
			switch {
			case pr.HTTPGet != nil:
				port = pr.HTTPGet.Port
			case pr.TCPSocket != nil:
				port = pr.TCPSocket.Port
			case pr.GRPC != nil:
				port = intstr.FromInt32(pr.GRPC.Port)
			default:
				continue // exec probes run inside the container: no connection
			}
			if v := resolvePort(port, c.Ports); v != 0 {
				out = append(out, v)
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func resolvePort(p intstr.IntOrString, ports []corev1.ContainerPort) uint16 {
	if p.Type == intstr.Int {
		if p.IntVal > 0 && p.IntVal <= 65535 {
			return uint16(p.IntVal)
		}
		return 0
	}
	for _, cp := range ports {
		if cp.Name == p.StrVal && cp.ContainerPort > 0 && cp.ContainerPort <= 65535 {
			return uint16(cp.ContainerPort)
		}
	}
	return 0
}

// service converts a service with its EndpointSlices; nil for services without a VIP.
func service(svc *corev1.Service, nsLabels map[string]string, eps []*discoveryv1.EndpointSlice, taken map[netip.Addr]string) (*workload.Service, []error) {
	if svc.Spec.Type == corev1.ServiceTypeExternalName {
		return nil, nil
	}
	key := svc.Namespace + "/" + svc.Name
	var problems []error
	out := &workload.Service{
		Name: svc.Name, Namespace: svc.Namespace,
		Waypoint:    cmp.Or(svc.Labels[LabelUseWaypoint], nsLabels[LabelUseWaypoint]),
		EndpointIPs: []netip.Addr{}, // endpoints come from EndpointSlices only, even when there are none
	}
	if v, ok := svc.Labels[LabelWaypointFor]; ok {
		t, ok := workload.ParseWaypointTraffic(v)
		if !ok {
			// Fail closed: not a waypoint, so traffic that names it is refused (the
			// reference does not resolve), never sent direct.
			problems = append(problems, fmt.Errorf("service %s: label %s=%q is not service, workload, all or none", key, LabelWaypointFor, v))
			t = workload.NotWaypoint
		}
		out.WaypointFor = t
	}
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 && svc.Spec.ClusterIP != "" {
		ips = []string{svc.Spec.ClusterIP}
	}
	for _, s := range ips {
		if s == corev1.ClusterIPNone {
			return nil, nil // headless: clients dial the pods, which amesh sees as workloads
		}
		ip, err := netip.ParseAddr(s)
		if err != nil {
			continue
		}
		ip = ip.Unmap()
		if other, dup := taken[ip]; dup {
			problems = append(problems, fmt.Errorf("service %s: cluster ip %s is also %s's: left out", key, ip, other))
			continue
		}
		out.VIPs = append(out.VIPs, ip)
	}
	if len(out.VIPs) == 0 {
		return nil, problems
	}
	// A named targetPort is resolved through the slices: their ports carry the service port's name
	// and the number the endpoints listen on.
	slicePort := map[string]uint16{}
	for _, es := range eps {
		for _, p := range es.Ports {
			if p.Port != nil && *p.Port > 0 && *p.Port <= 65535 && (p.Protocol == nil || *p.Protocol == corev1.ProtocolTCP) {
				name := ""
				if p.Name != nil {
					name = *p.Name
				}
				slicePort[name] = uint16(*p.Port)
			}
		}
	}
	for _, sp := range svc.Spec.Ports {
		if sp.Protocol != "" && sp.Protocol != corev1.ProtocolTCP {
			continue
		}
		target := uint16(0)
		switch {
		case sp.TargetPort.Type == intstr.Int && sp.TargetPort.IntVal > 0 && sp.TargetPort.IntVal <= 65535:
			target = uint16(sp.TargetPort.IntVal)
		case sp.TargetPort.Type == intstr.String && sp.TargetPort.StrVal != "":
			target = slicePort[sp.Name]
			if target == 0 {
				problems = append(problems, fmt.Errorf("service %s: port %d: named targetPort %q not in its EndpointSlices yet", key, sp.Port, sp.TargetPort.StrVal))
				continue
			}
		}
		out.Ports = append(out.Ports, workload.ServicePort{Port: uint16(sp.Port), TargetPort: target})
	}
	seen := map[netip.Addr]bool{}
	for _, es := range eps {
		if es.AddressType != discoveryv1.AddressTypeIPv4 && es.AddressType != discoveryv1.AddressTypeIPv6 {
			continue
		}
		for _, ep := range es.Endpoints {
			if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
				continue // as kube-proxy: not ready, no new connections
			}
			for _, a := range ep.Addresses {
				if ip, err := netip.ParseAddr(a); err == nil && !seen[ip.Unmap()] {
					seen[ip.Unmap()] = true
					out.EndpointIPs = append(out.EndpointIPs, ip.Unmap())
				}
			}
		}
	}
	slices.SortFunc(out.EndpointIPs, netip.Addr.Compare)
	return out, problems
}

// The AuthorizationPolicy spec, Istio's shape (L7 fields for waypoint policies only);
// deploy/crd.yaml is its schema.
type (
	policySpec struct {
		Selector *struct {
			MatchLabels map[string]string `json:"matchLabels"`
		} `json:"selector"`
		TargetRefs []struct {
			Group string `json:"group"`
			Kind  string `json:"kind"`
			Name  string `json:"name"`
		} `json:"targetRefs"`
		Action string `json:"action"`
		Rules  []struct {
			From []struct {
				Source struct {
					Principals    []string `json:"principals"`
					NotPrincipals []string `json:"notPrincipals"`
					Namespaces    []string `json:"namespaces"`
					NotNamespaces []string `json:"notNamespaces"`
				} `json:"source"`
			} `json:"from"`
			To []struct {
				Operation struct {
					Ports      []string `json:"ports"`
					NotPorts   []string `json:"notPorts"`
					Hosts      []string `json:"hosts"`
					NotHosts   []string `json:"notHosts"`
					Methods    []string `json:"methods"`
					NotMethods []string `json:"notMethods"`
					Paths      []string `json:"paths"`
					NotPaths   []string `json:"notPaths"`
				} `json:"operation"`
			} `json:"to"`
			When []struct {
				Key       string   `json:"key"`
				Values    []string `json:"values"`
				NotValues []string `json:"notValues"`
			} `json:"when"`
		} `json:"rules"`
	}
)

// Policy converts an AuthorizationPolicy object. Fields amesh does not know, L7 fields on a
// policy without targetRefs (both of which the CRD's schema already refuses) and invalid values
// are an error; the Policy returned with an error denies every connection to the workloads it
// selects, or through the waypoints it targets (an ALLOW with no rules), so that a policy amesh
// cannot enforce as written fails closed.
func Policy(u *unstructured.Unstructured) (policy.Policy, error) {
	p := policy.Policy{Name: u.GetName(), Namespace: u.GetNamespace()}
	failClosed := func(err error) (policy.Policy, error) {
		closed := policy.Policy{Name: p.Name, Namespace: p.Namespace, Selector: p.Selector, TargetRefs: p.TargetRefs, Action: policy.Allow, Rules: []policy.Rule{}}
		if policy.ValidateLabels(closed.Selector) != nil || len(closed.TargetRefs) > 0 {
			closed.Selector = nil // a selector we cannot read: deny for the whole namespace
		}
		if policy.Validate(closed) != nil {
			closed.TargetRefs = nil // targets we cannot read: deny at L4 for the namespace
		}
		return closed, fmt.Errorf("workload: AuthorizationPolicy %s/%s: %w: denying all traffic to the workloads it selects until it is fixed", p.Namespace, p.Name, err)
	}
	raw, _, err := unstructured.NestedFieldNoCopy(u.Object, "spec")
	if err != nil {
		return failClosed(err)
	}
	b, err := json.Marshal(raw)
	if err != nil {
		return failClosed(err)
	}
	var spec policySpec
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&spec); err != nil && raw != nil {
		if spec.Selector != nil {
			p.Selector = spec.Selector.MatchLabels
		}
		return failClosed(fmt.Errorf("spec: %w", err))
	}
	if spec.Selector != nil {
		p.Selector = spec.Selector.MatchLabels
	}
	for _, r := range spec.TargetRefs {
		p.TargetRefs = append(p.TargetRefs, policy.TargetRef{Group: r.Group, Kind: r.Kind, Name: r.Name})
	}
	switch spec.Action {
	case "", "ALLOW":
		p.Action = policy.Allow
	case "DENY":
		p.Action = policy.Deny
	default:
		return failClosed(fmt.Errorf("action %q is not ALLOW or DENY (amesh enforces L4 only)", spec.Action))
	}
	if spec.Rules != nil {
		p.Rules = make([]policy.Rule, 0, len(spec.Rules))
	}
	var errs []error
	for r, rule := range spec.Rules {
		var nr policy.Rule
		for _, f := range rule.From {
			s := f.Source
			nr.From = append(nr.From, policy.Source{Principals: s.Principals, NotPrincipals: s.NotPrincipals, Namespaces: s.Namespaces, NotNamespaces: s.NotNamespaces})
		}
		for t, to := range rule.To {
			ports := func(field string, in []string) []uint16 {
				var out []uint16
				for k, s := range in {
					v, err := strconv.ParseUint(s, 10, 16)
					if err != nil || v == 0 {
						errs = append(errs, fmt.Errorf("rules[%d].to[%d].operation.%s[%d]: port %q is not a number in 1..65535", r, t, field, k, s))
						continue
					}
					out = append(out, uint16(v))
				}
				return out
			}
			o := to.Operation
			nr.To = append(nr.To, policy.Operation{Ports: ports("ports", o.Ports), NotPorts: ports("notPorts", o.NotPorts),
				Hosts: o.Hosts, NotHosts: o.NotHosts, Methods: o.Methods, NotMethods: o.NotMethods, Paths: o.Paths, NotPaths: o.NotPaths})
		}
		for _, w := range rule.When {
			nr.When = append(nr.When, policy.Condition{Key: w.Key, Values: w.Values, NotValues: w.NotValues})
		}
		p.Rules = append(p.Rules, nr)
	}
	if err := errors.Join(errs...); err != nil {
		return failClosed(err)
	}
	if err := policy.Validate(p); err != nil {
		return failClosed(err)
	}
	return p, nil
}

// cronJobSuffix is how the CronJob controller names a Job it starts: "<cronjob>-<scheduled time
// in minutes>".
var cronJobSuffix = regexp.MustCompile(`^(.+)-[0-9]{8,10}$`)

// ownerName is the name of what runs pod, as Istio derives a workload's name: the Deployment
// of a ReplicaSet the Deployment controller made (the ReplicaSet's name less its
// pod-template-hash), the CronJob of a Job the CronJob controller made, otherwise the name of
// the pod's controller (StatefulSet, DaemonSet, Job, ReplicaSet), and the pod's own name when
// it has none.
func ownerName(pod *corev1.Pod) string {
	ref := metav1.GetControllerOf(pod)
	if ref == nil {
		return pod.Name
	}
	return ownerFrom(pod.Labels, ref.Kind, ref.Name)
}

// ownerFrom is ownerName for a pod with labels whose controller is of kind and name.
func ownerFrom(labels map[string]string, kind, name string) string {
	switch kind {
	case "ReplicaSet":
		if h := labels["pod-template-hash"]; h != "" {
			if n, ok := strings.CutSuffix(name, "-"+h); ok && n != "" {
				return n
			}
		}
	case "Job":
		if m := cronJobSuffix.FindStringSubmatch(name); m != nil {
			return m[1]
		}
	}
	return name
}
