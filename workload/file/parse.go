package file

import (
	"bytes"
	"errors"
	"io"
	"regexp"
	"strconv"
	"strings"

	"github.com/amesh-dev/amesh/workload"
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
		Routes        []routeYAML    `yaml:"routes"`
	}
	nodeYAML struct {
		Name string `yaml:"name"`
		IP   string `yaml:"ip"`
	}
	workloadYAML struct {
		UID            string            `yaml:"uid"`
		Name           string            `yaml:"name"`
		WorkloadName   string            `yaml:"workloadName"`
		Namespace      string            `yaml:"namespace"`
		ServiceAccount string            `yaml:"serviceAccount"`
		Node           string            `yaml:"node"`
		IPs            []string          `yaml:"ips"`
		Netns          string            `yaml:"netns"`
		Mode           string            `yaml:"mode"`
		InboundMode    string            `yaml:"inboundMode"`
		Labels         map[string]string `yaml:"labels"`
		Waypoint       string            `yaml:"waypoint"`
		AllowBypass    bool              `yaml:"allowWaypointBypass"`
		ProbePorts     []int             `yaml:"probePorts"`
	}
	serviceYAML struct {
		Name      string            `yaml:"name"`
		Namespace string            `yaml:"namespace"`
		VIPs      []string          `yaml:"vips"`
		Ports     []servicePortYAML `yaml:"ports"`
		Selector  map[string]string `yaml:"selector"`
		Waypoint  string            `yaml:"waypoint"`
		// WaypointFor makes the service a waypoint: service, workload, all or none.
		WaypointFor string `yaml:"waypointFor"`
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
		// TargetRefs make it a waypoint's policy (L7 fields allowed), as Istio's.
		TargetRefs []targetRefYAML `yaml:"targetRefs"`
	}
	targetRefYAML struct {
		Group string `yaml:"group"`
		Kind  string `yaml:"kind"`
		Name  string `yaml:"name"`
	}
	ruleYAML struct {
		From []fromYAML      `yaml:"from"`
		To   []toYAML        `yaml:"to"`
		When []conditionYAML `yaml:"when"`
	}
	conditionYAML struct {
		Key       string   `yaml:"key"`
		Values    []string `yaml:"values"`
		NotValues []string `yaml:"notValues"`
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
		Ports      []string `yaml:"ports"`
		NotPorts   []string `yaml:"notPorts"`
		Hosts      []string `yaml:"hosts"`
		NotHosts   []string `yaml:"notHosts"`
		Methods    []string `yaml:"methods"`
		NotMethods []string `yaml:"notMethods"`
		Paths      []string `yaml:"paths"`
		NotPaths   []string `yaml:"notPaths"`
	}
	// A route is an HTTPRoute's metadata and spec, flattened, with Gateway API's field names.
	routeYAML struct {
		Name       string          `yaml:"name"`
		Namespace  string          `yaml:"namespace"`
		ParentRefs []parentRefYAML `yaml:"parentRefs"`
		Rules      []routeRuleYAML `yaml:"rules"`
	}
	parentRefYAML struct {
		Group string `yaml:"group"`
		Kind  string `yaml:"kind"`
		Name  string `yaml:"name"`
		Port  int    `yaml:"port"`
	}
	routeRuleYAML struct {
		Matches     []routeMatchYAML `yaml:"matches"`
		BackendRefs []backendRefYAML `yaml:"backendRefs"`
		Timeouts    struct {
			Request string `yaml:"request"`
		} `yaml:"timeouts"`
	}
	routeMatchYAML struct {
		Path *struct {
			Type  string `yaml:"type"`
			Value string `yaml:"value"`
		} `yaml:"path"`
		Headers []struct {
			Type  string `yaml:"type"`
			Name  string `yaml:"name"`
			Value string `yaml:"value"`
		} `yaml:"headers"`
		Method string `yaml:"method"`
	}
	backendRefYAML struct {
		Group  string `yaml:"group"`
		Kind   string `yaml:"kind"`
		Name   string `yaml:"name"`
		Port   int    `yaml:"port"`
		Weight *int   `yaml:"weight"`
	}
)

// Parse reads a state file (see the package doc for its format) and returns the workload.State
// it describes. name is the file's name as errors should show it. An invalid file is rejected
// whole: the error lists every problem, one per line, each as "name:line: what: problem".
//
// Checking runs in two phases, as a compiler's: first the YAML itself (syntax, unknown fields,
// types) and the syntax of values (addresses, modes, port numbers); then, only if that passed,
// the meaning (names, uniqueness, references, identities, policies). A YAML syntax error stops
// the first phase at once.
func Parse(name string, data []byte) (*workload.State, error) {
	p := &workload.Problems{File: name}
	heading := "parse " + name

	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var doc fileDoc
	err := dec.Decode(&doc)
	switch {
	case errors.Is(err, io.EOF):
		p.AddLine(1, errors.New("no YAML document (want a mapping with trustDomain, nodes, workloads, ...)"))
		return nil, p.Err(heading)
	case err != nil:
		yamlError(p, err)
		if _, ok := errors.AsType[*yaml.TypeError](err); !ok {
			return nil, p.Err(heading) // a syntax error: nothing more can be trusted
		}
		// Unknown fields and type errors: the rest of the file was decoded, check it too.
	default:
		var extra yaml.Node
		if err := dec.Decode(&extra); err == nil {
			p.AddLine(extra.Line, errors.New("a second YAML document: the state is one document"))
		} else if !errors.Is(err, io.EOF) {
			yamlError(p, err)
		}
	}

	// The same bytes again, as a tree of nodes: it knows the line of everything.
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		yamlError(p, err)
		return nil, p.Err(heading)
	}
	p.Locate = nodeLocator(&root)

	spec := convert(&doc, p)
	if err := p.Err(heading); err != nil {
		return nil, err
	}
	// A reference to a waypoint that is not there is refused with its line: in a file, it is a
	// typo to fix before the file applies.
	workload.CheckWaypointReferences(&spec, p)
	s := workload.Build(spec, p)
	if err := p.Err(heading); err != nil {
		return nil, err
	}
	return s, nil
}

var (
	yamlLine = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)
	// Go type names in yaml's messages (qualified with this package's name), as a reader of the
	// file knows them.
	yamlTypes = strings.NewReplacer(
		"file.fileDoc", "state file",
		"file.nodeYAML", "node",
		"file.workloadYAML", "workload",
		"file.serviceYAML", "service",
		"file.servicePortYAML", "service port",
		"file.policyYAML", "policy",
		"file.ruleYAML", "policy rule",
		"file.fromYAML", "from",
		"file.toYAML", "to",
		"file.sourceYAML", "source",
		"file.operationYAML", "operation",
	)
)

// yamlError records the problems of a yaml decoding error, each at its line.
func yamlError(p *workload.Problems, err error) {
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
		p.AddLine(line, errors.New(yamlTypes.Replace(m)))
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
