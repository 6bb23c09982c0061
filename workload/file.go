package workload

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"regexp"
	"strconv"
	"strings"

	"github.com/amesh-dev/amesh/policy"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.yaml.in/yaml/v3"
)

// The state file, as decoded. Every struct is decoded with KnownFields, so a misspelt or
// unsupported field is an error rather than silently ignored: an ignored field of a DENY policy
// (an Istio ipBlocks, say) would let through what its author meant to stop.
type (
	fileDoc struct {
		TrustDomain   string         `yaml:"trustDomain"`
		RootNamespace string         `yaml:"rootNamespace"`
		Nodes         []nodeYAML     `yaml:"nodes"`
		Workloads     []workloadYAML `yaml:"workloads"`
		Services      []serviceYAML  `yaml:"services"`
		Policies      []policyYAML   `yaml:"policies"`
	}
	nodeYAML struct {
		Name string `yaml:"name"`
		IP   string `yaml:"ip"`
	}
	workloadYAML struct {
		UID            string            `yaml:"uid"`
		Name           string            `yaml:"name"`
		Namespace      string            `yaml:"namespace"`
		ServiceAccount string            `yaml:"serviceAccount"`
		Node           string            `yaml:"node"`
		IPs            []string          `yaml:"ips"`
		Netns          string            `yaml:"netns"`
		Mode           string            `yaml:"mode"`
		InboundMode    string            `yaml:"inboundMode"`
		Labels         map[string]string `yaml:"labels"`
		Waypoint       string            `yaml:"waypoint"`
		ProbePorts     []int             `yaml:"probePorts"`
	}
	serviceYAML struct {
		Name      string            `yaml:"name"`
		Namespace string            `yaml:"namespace"`
		VIPs      []string          `yaml:"vips"`
		Ports     []servicePortYAML `yaml:"ports"`
		Selector  map[string]string `yaml:"selector"`
		Waypoint  string            `yaml:"waypoint"`
	}
	servicePortYAML struct {
		Port       int `yaml:"port"`
		TargetPort int `yaml:"targetPort"`
	}
	policyYAML struct {
		Name      string            `yaml:"name"`
		Namespace string            `yaml:"namespace"`
		Selector  map[string]string `yaml:"selector"`
		Action    string            `yaml:"action"`
		Rules     []ruleYAML        `yaml:"rules"`
	}
	ruleYAML struct {
		From []fromYAML `yaml:"from"`
		To   []toYAML   `yaml:"to"`
	}
	fromYAML struct {
		Source sourceYAML `yaml:"source"`
	}
	toYAML struct {
		Operation operationYAML `yaml:"operation"`
	}
	sourceYAML struct {
		Principals    []string `yaml:"principals"`
		NotPrincipals []string `yaml:"notPrincipals"`
		Namespaces    []string `yaml:"namespaces"`
		NotNamespaces []string `yaml:"notNamespaces"`
	}
	// Ports are strings in Istio's API; plain YAML numbers decode into them too.
	operationYAML struct {
		Ports    []string `yaml:"ports"`
		NotPorts []string `yaml:"notPorts"`
	}
)

// Parse reads a state file (see the package doc for its format) and returns the State it
// describes. name is the file's name as errors should show it. An invalid file is rejected whole:
// the error lists every problem, one per line, each as "name:line: what: problem".
//
// Checking runs in two phases, as a compiler's: first the YAML itself (syntax, unknown fields,
// types) and the syntax of values (addresses, modes, port numbers); then, only if that passed,
// the meaning (names, uniqueness, references, identities, policies). A YAML syntax error stops
// the first phase at once.
func Parse(name string, data []byte) (*State, error) {
	p := &problems{file: name}
	heading := "parse " + name

	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var doc fileDoc
	err := dec.Decode(&doc)
	switch {
	case errors.Is(err, io.EOF):
		p.addLine(1, errors.New("no YAML document (want a mapping with trustDomain, nodes, workloads, ...)"))
		return nil, p.err(heading)
	case err != nil:
		p.yamlError(err)
		if _, ok := errors.AsType[*yaml.TypeError](err); !ok {
			return nil, p.err(heading) // a syntax error: nothing more can be trusted
		}
		// Unknown fields and type errors: the rest of the file was decoded, check it too.
	default:
		var extra yaml.Node
		if err := dec.Decode(&extra); err == nil {
			p.addLine(extra.Line, errors.New("a second YAML document: the state is one document"))
		} else if !errors.Is(err, io.EOF) {
			p.yamlError(err)
		}
	}

	// The same bytes again, as a tree of nodes: it knows the line of everything.
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		p.yamlError(err)
		return nil, p.err(heading)
	}
	p.loc = nodeLocator(&root)

	spec := convert(&doc, p)
	if err := p.err(heading); err != nil {
		return nil, err
	}
	s := build(spec, p)
	if err := p.err(heading); err != nil {
		return nil, err
	}
	return s, nil
}

var (
	yamlLine = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)
	// Go type names in yaml's messages, as a reader of the file knows them.
	yamlTypes = strings.NewReplacer(
		"workload.fileDoc", "state file",
		"workload.nodeYAML", "node",
		"workload.workloadYAML", "workload",
		"workload.serviceYAML", "service",
		"workload.servicePortYAML", "service port",
		"workload.policyYAML", "policy",
		"workload.ruleYAML", "policy rule",
		"workload.fromYAML", "from",
		"workload.toYAML", "to",
		"workload.sourceYAML", "source",
		"workload.operationYAML", "operation",
	)
)

// yamlError records the problems of a yaml decoding error, each at its line.
func (p *problems) yamlError(err error) {
	msgs := []string{err.Error()}
	if te, ok := errors.AsType[*yaml.TypeError](err); ok {
		msgs = te.Errors
	}
	for _, m := range msgs {
		line := 0
		if sub := yamlLine.FindStringSubmatch(m); sub != nil {
			line, _ = strconv.Atoi(sub[1])
			m = sub[2]
		} else {
			m = strings.TrimPrefix(m, "yaml: ")
		}
		if where, ok := parserProblems[m]; ok {
			// yaml.v3 reports parser errors (not scanner or type errors) with a 0-based line: the
			// line of the collection being parsed when present, else of the problem (see
			// parser.fail in its decode.go). Make it 1-based and say which line it is.
			line++
			m += where
		}
		p.addLine(line, errors.New(yamlTypes.Replace(m)))
	}
}

// parserProblems are the messages of yaml's parser errors, with what the line they come with
// points at.
var parserProblems = map[string]string{
	"did not find expected <stream-start>":   "",
	"did not find expected <document start>": "",
	"found undefined tag handle":             " (in the node that starts here)",
	"did not find expected node content":     " (in the node that starts here)",
	"did not find expected '-' indicator":    " (in the list that starts here)",
	"did not find expected key":              " (in the mapping that starts here)",
	"did not find expected ',' or ']'":       " (in the list that starts here)",
	"did not find expected ',' or '}'":       " (in the mapping that starts here)",
	"found duplicate %YAML directive":        "",
	"found incompatible YAML document":       "",
	"found duplicate %TAG directive":         "",
}

// nodeLocator finds lines in the tree of a state file. Paths are dotted field names with
// indices, "ips[1]" or "rules[0].from[1].source.principals[2]"; a path that goes further than the
// file does yields the line of the deepest node it reached.
func nodeLocator(root *yaml.Node) locator {
	top := root
	if top.Kind == yaml.DocumentNode && len(top.Content) > 0 {
		top = top.Content[0]
	}
	return func(section string, i int, path string) int {
		n := top
		if section != "" {
			seq := field(n, section)
			if seq == nil {
				return n.Line
			}
			if seq.Kind != yaml.SequenceNode || i < 0 || i >= len(seq.Content) {
				return seq.Line
			}
			n = deref(seq.Content[i])
		}
		return walk(n, path).Line
	}
}

func deref(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

// field returns the value of key in mapping n, or nil.
func field(n *yaml.Node, key string) *yaml.Node {
	n = deref(n)
	if n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return deref(n.Content[i+1])
		}
	}
	return nil
}

func walk(n *yaml.Node, path string) *yaml.Node {
	if path == "" {
		return n
	}
	for seg := range strings.SplitSeq(path, ".") {
		key, rest, _ := strings.Cut(seg, "[")
		if key != "" {
			v := field(n, key)
			if v == nil {
				return n
			}
			n = v
		}
		for rest != "" {
			idx, tail, _ := strings.Cut(rest, "]")
			rest = strings.TrimPrefix(tail, "[")
			i, err := strconv.Atoi(idx)
			if err != nil || n.Kind != yaml.SequenceNode || i < 0 || i >= len(n.Content) {
				return n
			}
			n = deref(n.Content[i])
		}
	}
	return n
}

// convert turns the decoded file into a Spec, checking the syntax of the values it converts.
func convert(doc *fileDoc, p *problems) Spec {
	spec := Spec{RootNamespace: doc.RootNamespace}
	if doc.TrustDomain != "" {
		td, err := spiffeid.TrustDomainFromString(doc.TrustDomain)
		if err != nil {
			p.addf(secTop, 0, "trustDomain", "trustDomain", "%q is not a SPIFFE trust domain: %w", doc.TrustDomain, err)
		}
		spec.TrustDomain = td
	}

	addr := func(section string, i int, path, what, kind, s string) netip.Addr {
		if s == "" {
			return netip.Addr{}
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			p.addf(section, i, path, what, "%s %q is not an IP address", kind, s)
		}
		return a
	}

	for i, n := range doc.Nodes {
		what := "node " + n.Name
		if n.IP == "" {
			p.add(secNodes, i, "ip", what, errors.New("ip is not set"))
		}
		spec.Nodes = append(spec.Nodes, Node{Name: n.Name, IP: addr(secNodes, i, "ip", what, "ip", n.IP)})
	}

	for i, w := range doc.Workloads {
		what := "workload " + w.Namespace + "/" + w.Name
		out := Workload{
			UID: w.UID, Name: w.Name, Namespace: w.Namespace, ServiceAccount: w.ServiceAccount,
			Node: w.Node, Netns: w.Netns, Labels: w.Labels, Waypoint: w.Waypoint,
		}
		for k, s := range w.IPs {
			out.IPs = append(out.IPs, addr(secWorkloads, i, fmt.Sprintf("ips[%d]", k), what, "ip", s))
		}
		for k, v := range w.ProbePorts {
			if v < 1 || v > 65535 {
				p.addf(secWorkloads, i, fmt.Sprintf("probePorts[%d]", k), what, "probe port %d is out of range 1..65535", v)
				continue
			}
			out.ProbePorts = append(out.ProbePorts, uint16(v))
		}
		switch strings.ToLower(w.Mode) {
		case "", "ambient":
			out.Mode = ModeAmbient
		case "none":
			out.Mode = ModeNone
		default:
			p.addf(secWorkloads, i, "mode", what, "mode %q is not ambient or none", w.Mode)
		}
		switch strings.ToLower(w.InboundMode) {
		case "", "strict":
			out.InboundMode = InboundStrict
		case "permissive":
			out.InboundMode = InboundPermissive
		default:
			p.addf(secWorkloads, i, "inboundMode", what, "inboundMode %q is not strict or permissive", w.InboundMode)
		}
		spec.Workloads = append(spec.Workloads, out)
	}

	for i, s := range doc.Services {
		what := "service " + s.Namespace + "/" + s.Name
		out := Service{Name: s.Name, Namespace: s.Namespace, Selector: s.Selector, Waypoint: s.Waypoint}
		for k, v := range s.VIPs {
			out.VIPs = append(out.VIPs, addr(secServices, i, fmt.Sprintf("vips[%d]", k), what, "vip", v))
		}
		for k, sp := range s.Ports {
			port := func(field string, v int) uint16 {
				if v < 0 || v > 65535 {
					p.addf(secServices, i, fmt.Sprintf("ports[%d].%s", k, field), what, "%s %d is out of range 1..65535", field, v)
					return 0
				}
				return uint16(v)
			}
			out.Ports = append(out.Ports, ServicePort{Port: port("port", sp.Port), TargetPort: port("targetPort", sp.TargetPort)})
		}
		spec.Services = append(spec.Services, out)
	}

	for i, pol := range doc.Policies {
		what := "policy " + pol.Namespace + "/" + pol.Name
		out := policy.Policy{Name: pol.Name, Namespace: pol.Namespace, Selector: pol.Selector, Action: policy.Action(pol.Action)}
		if pol.Rules != nil {
			out.Rules = make([]policy.Rule, 0, len(pol.Rules))
		}
		for r, rule := range pol.Rules {
			var nr policy.Rule
			for _, from := range rule.From {
				s := from.Source
				nr.From = append(nr.From, policy.Source{
					Principals: s.Principals, NotPrincipals: s.NotPrincipals,
					Namespaces: s.Namespaces, NotNamespaces: s.NotNamespaces,
				})
			}
			for t, to := range rule.To {
				ports := func(field string, in []string) []uint16 {
					var out []uint16
					for k, s := range in {
						v, err := strconv.ParseUint(s, 10, 16)
						if err != nil {
							p.addf(secPolicies, i, fmt.Sprintf("rules[%d].to[%d].operation.%s[%d]", r, t, field, k), what,
								"port %q is not a number in 1..65535", s)
						}
						out = append(out, uint16(v))
					}
					return out
				}
				nr.To = append(nr.To, policy.Operation{
					Ports:    ports("ports", to.Operation.Ports),
					NotPorts: ports("notPorts", to.Operation.NotPorts),
				})
			}
			out.Rules = append(out.Rules, nr)
		}
		spec.Policies = append(spec.Policies, out)
	}
	return spec
}
