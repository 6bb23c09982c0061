// Command amesh-cni is the chained CNI plugin that enrolls each new pod with the node's amesh
// agent before the pod starts (package cniplugin). The container runtime runs it from the CNI bin
// directory; `amesh-agent install-cni` puts it there and into the node's CNI configuration.
package main

import (
	"github.com/amesh-dev/amesh/cniplugin"
	"github.com/containernetworking/cni/pkg/skel"
)

func main() {
	var p cniplugin.Plugin
	skel.PluginMainFuncs(p.Funcs(), cniplugin.SupportedVersions, "CNI plugin amesh-cni: enrolls pods with the node's amesh agent")
}
