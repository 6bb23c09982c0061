package adminapi

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"

	"go.yaml.in/yaml/v3"
)

// Kinds are the lists of a dump that ameshctl shows.
var Kinds = []string{"workloads", "services", "policies", "certificates", "connections"}

// Section returns the list of d called kind (see Kinds), for -o json|yaml.
func Section(d *ConfigDump, kind string) (any, error) {
	switch kind {
	case "workloads":
		return d.Workloads, nil
	case "services":
		return d.Services, nil
	case "policies":
		return d.Policies, nil
	case "certificates":
		return d.Certificates, nil
	case "connections":
		return slices.Concat(d.Connections, d.KernelPath), nil
	}
	return nil, fmt.Errorf("unknown list %q (want one of %s)", kind, strings.Join(Kinds, ", "))
}

// Write prints the list of d called kind in format: table (aligned columns), json or yaml.
func Write(w io.Writer, d *ConfigDump, kind, format string) error {
	v, err := Section(d, kind)
	if err != nil {
		return err
	}
	if done, err := encode(w, v, format); done || err != nil {
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	row := func(cols ...string) { fmt.Fprintln(tw, strings.Join(cols, "\t")) }
	switch kind {
	case "workloads":
		row("NAMESPACE", "NAME", "IP", "NODE", "PROTOCOL", "IDENTITY")
		ws := slices.Clone(d.Workloads)
		slices.SortFunc(ws, func(a, b Workload) int { return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name) })
		for _, x := range ws {
			row(x.Namespace, x.Name, strings.Join(x.WorkloadIPs, ","), x.Node, x.Protocol, "spiffe://"+x.TrustDomain+"/ns/"+x.Namespace+"/sa/"+x.ServiceAccount)
		}
	case "services":
		row("NAMESPACE", "NAME", "VIPS", "PORTS", "ENDPOINTS")
		ss := slices.Clone(d.Services)
		slices.SortFunc(ss, func(a, b Service) int { return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name) })
		for _, x := range ss {
			var ports []string
			for _, p := range slices.Sorted(maps.Keys(x.Ports)) {
				ports = append(ports, fmt.Sprintf("%s->%d", p, x.Ports[p]))
			}
			row(x.Namespace, x.Name, strings.Join(x.VIPs, ","), strings.Join(ports, ","), fmt.Sprint(len(x.Endpoints)))
		}
	case "policies":
		row("NAMESPACE", "NAME", "ACTION", "SCOPE")
		for _, x := range d.Policies {
			row(x.Namespace, x.Name, x.Action, x.Scope)
		}
	case "certificates":
		row("IDENTITY", "SOURCE", "STATE", "SERIAL", "VALID FROM", "EXPIRES", "DETAIL")
		for _, x := range d.Certificates {
			serial, from, to := "-", "-", "-"
			if len(x.CertChain) > 0 {
				serial, from, to = x.CertChain[0].SerialNumber, x.CertChain[0].ValidFrom, x.CertChain[0].ExpirationTime
			}
			row(x.Identity, cmp.Or(x.Source, "-"), x.State, serial, from, to, cmp.Or(x.Detail, "-"))
		}
	case "connections":
		row("SOURCE", "DESTINATION", "PORT", "PATH")
		for _, x := range slices.Concat(d.Connections, d.KernelPath) {
			path := x.Path
			if path == "" {
				path = "relayed"
			}
			port := "-"
			if x.Port != 0 {
				port = fmt.Sprint(x.Port)
			}
			row(x.Src, x.Dst, port, path)
		}
	}
	return tw.Flush()
}

// WriteCheck prints a policy check: one line (ALLOW or DENY, the deciding policy, why), or json
// or yaml.
func WriteCheck(w io.Writer, pc *PolicyCheck, format string) error {
	if done, err := encode(w, pc, format); done || err != nil {
		return err
	}
	verdict := "DENY"
	if pc.Allowed {
		verdict = "ALLOW"
	}
	by := "by default"
	if pc.Policy != "" {
		by = "by " + pc.Policy
	}
	from := pc.From
	if from == "" {
		from = "(plaintext)"
	}
	_, err := fmt.Fprintf(w, "%s %s -> %s (%s) %s: %s\n", verdict, from, pc.To, pc.Destination, by, pc.Reason)
	return err
}

// encode writes v as json or yaml (through JSON, so the keys are the API's names) and says it
// did; for table (or no format) it does nothing, and the caller draws the table.
func encode(w io.Writer, v any, format string) (done bool, err error) {
	switch format {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return true, enc.Encode(v)
	case "yaml":
		b, err := json.Marshal(v)
		if err != nil {
			return true, err
		}
		var generic any
		if err := yaml.Unmarshal(b, &generic); err != nil {
			return true, err
		}
		return true, yaml.NewEncoder(w).Encode(generic)
	case "", "table":
		return false, nil
	}
	return true, fmt.Errorf("output format %q: want table, json or yaml", format)
}
