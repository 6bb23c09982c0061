package e2e

import (
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// TestDeployArgsParse runs the real amesh-agent with the command line of every container in
// deploy/ (DaemonSet: agent, cni and the init container; the CA Job) followed by --help: a misspelt or removed
// flag fails here rather than in a user's cluster.
func TestDeployArgsParse(t *testing.T) {
	type container struct {
		Name    string   `yaml:"name"`
		Command []string `yaml:"command"`
		Args    []string `yaml:"args"`
	}
	checked := 0
	for _, file := range []string{"daemonset.yaml", "ca.yaml"} {
		b, err := os.ReadFile(repoPath(t, "deploy/"+file))
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(b))
		for {
			var doc struct {
				Spec struct {
					Template struct {
						Spec struct {
							InitContainers []container `yaml:"initContainers"`
							Containers     []container `yaml:"containers"`
						} `yaml:"spec"`
					} `yaml:"template"`
				} `yaml:"spec"`
			}
			if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				t.Fatalf("%s: %v", file, err)
			}
			for _, c := range append(doc.Spec.Template.Spec.InitContainers, doc.Spec.Template.Spec.Containers...) {
				checkArgs(t, file, c.Name, c.Command, c.Args)
				checked++
			}
		}
	}
	if checked != 4 {
		t.Errorf("checked %d containers of deploy/, want 4 (agent, cni, install-cni, create-ca)", checked)
	}
}

func checkArgs(t *testing.T, file, name string, command, args []string) {
	t.Helper()
	if len(command) != 1 || command[0] != "amesh-agent" {
		t.Errorf("%s: container %s runs %q, want amesh-agent", file, name, command)
		return
	}
	// The downward-API variables the DaemonSet sets, as kubelet expands them.
	expand := strings.NewReplacer("$(NODE_NAME)", "node1", "$(HOST_IP)", "10.0.0.1")
	argv := make([]string, 0, len(args)+1)
	for _, a := range args {
		argv = append(argv, expand.Replace(a))
	}
	out, err := exec.Command(agentBin, append(argv, "--help")...).CombinedOutput()
	if err != nil {
		t.Errorf("%s: container %s: amesh-agent %q does not parse: %v\n%s", file, name, argv, err, out)
	}
}
