package lab

import (
	"bytes"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/amesh-dev/amesh/workload/file"
)

// StateYAML returns the lab as an amesh state file (the format of package workload/file): its trust
// domain, its nodes and a workload for every pod, with no services or policies.
func (l *Lab) StateYAML() []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "# The state of lab %s, written by package lab.\n", l.Prefix)
	fmt.Fprintf(&b, "trustDomain: %s\n", q(l.TrustDomain))
	b.WriteString("nodes:\n")
	for _, n := range l.Nodes {
		fmt.Fprintf(&b, "  - {name: %s, ip: %s}\n", q(n.Name), n.IP)
	}
	pods := l.Pods()
	if len(pods) == 0 {
		b.WriteString("workloads: []\n")
		return b.Bytes()
	}
	b.WriteString("workloads:\n")
	for _, p := range pods {
		fmt.Fprintf(&b, "  - name: %s\n", q(p.Name))
		fmt.Fprintf(&b, "    namespace: %s\n", q(p.Namespace))
		fmt.Fprintf(&b, "    serviceAccount: %s\n", q(p.ServiceAccount))
		fmt.Fprintf(&b, "    node: %s\n", q(p.Node.Name))
		fmt.Fprintf(&b, "    ips: [%s]\n", p.IP)
		fmt.Fprintf(&b, "    netns: %s\n", q(p.Netns))
		fmt.Fprintf(&b, "    mode: %s\n", q(p.Spec.Mode))
		fmt.Fprintf(&b, "    inboundMode: %s\n", q(p.Spec.InboundMode))
		if p.Spec.Waypoint != "" {
			fmt.Fprintf(&b, "    waypoint: %s\n", q(p.Spec.Waypoint))
		}
		if len(p.Spec.ProbePorts) > 0 {
			var ports []string
			for _, v := range p.Spec.ProbePorts {
				ports = append(ports, strconv.Itoa(int(v)))
			}
			fmt.Fprintf(&b, "    probePorts: [%s]\n", strings.Join(ports, ", "))
		}
		if len(p.Spec.Labels) > 0 {
			var kv []string
			for _, k := range slices.Sorted(maps.Keys(p.Spec.Labels)) {
				kv = append(kv, q(k)+": "+q(p.Spec.Labels[k]))
			}
			fmt.Fprintf(&b, "    labels: {%s}\n", strings.Join(kv, ", "))
		}
	}
	return b.Bytes()
}

// q quotes s as a YAML double-quoted scalar, so that no name or label value ("true", "8080",
// "a: b") is read as anything but a string. Go's escapes are a subset of YAML's.
func q(s string) string { return strconv.Quote(s) }

// WriteState writes StateYAML, followed by the services and policies sections given as raw YAML
// (either may be empty), to path, atomically: agents polling the file read the old state or the
// new, never half of one. A section may start with its key ("services:") or be only its list
// ("- name: api ..."). A relative path is taken inside l.Dir. The result is checked with
// file.Parse first and not written if it is invalid; write a broken file by hand to test an
// agent's rejection.
func (l *Lab) WriteState(path, servicesYAML, policiesYAML string) error {
	return l.WriteStateWith(path, nil, servicesYAML, policiesYAML)
}

// WriteStateWith is WriteState with the lab's own part of the state (StateYAML) passed
// through edit first, when it is set: to add nodes or workloads that have no pod in the lab,
// say.
func (l *Lab) WriteStateWith(path string, edit func([]byte) []byte, servicesYAML, policiesYAML string) error {
	data := l.StateYAML()
	if edit != nil {
		data = edit(data)
	}
	data = appendSection(data, "services", servicesYAML)
	data = appendSection(data, "policies", policiesYAML)
	if !filepath.IsAbs(path) {
		path = filepath.Join(l.Dir, path)
	}
	if _, err := file.Parse(path, data); err != nil {
		return fmt.Errorf("lab: write state: %w", err)
	}
	if err := writeAtomic(path, data); err != nil {
		return fmt.Errorf("lab: write state: %w", err)
	}
	return nil
}

func appendSection(data []byte, key, raw string) []byte {
	if strings.TrimSpace(raw) == "" {
		return data
	}
	if t := strings.TrimLeft(raw, " \t\r\n"); !strings.HasPrefix(t, key+":") {
		data = append(data, key+":\n"...)
	}
	data = append(data, raw...)
	if !strings.HasSuffix(raw, "\n") {
		data = append(data, '\n')
	}
	return data
}

// writeAtomic writes data to a temporary file beside path and renames it over path.
func writeAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(f.Name(), 0o644)
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
	}
	return err
}
