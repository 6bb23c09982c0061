package file

import (
	"strconv"
	"strings"

	"github.com/amesh-dev/amesh/workload"
	"go.yaml.in/yaml/v3"
)

// nodeLocator finds lines in the tree of a state file. Paths are dotted field names with
// indices, "ips[1]" or "rules[0].from[1].source.principals[2]"; a path that goes further than the
// file does yields the line of the deepest node it reached.
func nodeLocator(root *yaml.Node) workload.Locator {
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
