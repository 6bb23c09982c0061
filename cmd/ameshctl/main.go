// Command ameshctl is amesh's operator tool: what a node's agent holds (workloads, services,
// policies, certificates, open connections), its log level, and the side-by-side benchmark suite.
// It reads the agent's admin API (--admin-addr, the node's 127.0.0.1:15000 by default).
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/amesh-dev/amesh/adminapi"
	"github.com/amesh-dev/amesh/adminapi/forward"
	"github.com/amesh-dev/amesh/bench"
	"github.com/amesh-dev/amesh/internal/version"
	"github.com/amesh-dev/amesh/waypoint"
)

func main() {
	if err := root().Execute(); err != nil {
		os.Exit(1)
	}
}

func root() *cobra.Command {
	var addr, output, node, kubeconfig, agentNS string
	var fwd *forward.Forward
	client := func() *adminapi.Client { return &adminapi.Client{Addr: addr} }
	cmd := &cobra.Command{
		Use:           "ameshctl",
		Short:         "amesh's operator tool",
		SilenceUsage:  true,
		SilenceErrors: false,
		// --node: the admin API of that node's agent, through a port-forward to its pod.
		PersistentPreRunE: func(c *cobra.Command, _ []string) error {
			if node == "" {
				return nil
			}
			f, err := forward.ToAgent(c.Context(), kubeconfig, agentNS, node)
			if err != nil {
				return err
			}
			fwd, addr = f, f.Addr
			return nil
		},
		PersistentPostRun: func(*cobra.Command, []string) {
			if fwd != nil {
				fwd.Close()
			}
		},
	}
	cmd.PersistentFlags().StringVar(&addr, "admin-addr", adminapi.DefaultAddr, "the agent's admin API (run ameshctl on the agent's node)")
	cmd.PersistentFlags().StringVar(&node, "node", "", "read the agent of this Kubernetes node instead, through a port-forward to its pod (pods/portforward in its namespace)")
	cmd.PersistentFlags().StringVar(&kubeconfig, "kubeconfig", "", "with --node: the kubeconfig (default $KUBECONFIG, then ~/.kube/config)")
	cmd.PersistentFlags().StringVar(&agentNS, "agent-namespace", "amesh-system", "with --node: the agents' namespace")
	for _, kind := range adminapi.Kinds {
		c := &cobra.Command{
			Use:   kind,
			Short: "the " + kind + " the agent holds",
			Args:  cobra.NoArgs,
			RunE: func(c *cobra.Command, _ []string) error {
				d, err := client().ConfigDump(c.Context())
				if err != nil {
					return err
				}
				return adminapi.Write(c.OutOrStdout(), d, kind, output)
			},
		}
		c.Flags().StringVarP(&output, "output", "o", "table", "table, json or yaml")
		cmd.AddCommand(c)
	}
	var level string
	logCmd := &cobra.Command{
		Use:   "log",
		Short: "show the agent's log level, or set it with --level",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			out, err := client().LogLevel(c.Context(), level)
			if err != nil {
				return err
			}
			fmt.Fprintln(c.OutOrStdout(), out)
			return nil
		},
	}
	logCmd.Flags().StringVar(&level, "level", "", "debug, info, warn or error")
	cmd.AddCommand(logCmd)
	var from, to string
	check := &cobra.Command{
		Use:   "check",
		Short: "how the agent's policies decide a connection: --from <spiffe id> (empty: plaintext) --to <ip:port>",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			pc, err := client().PolicyCheck(c.Context(), from, to)
			if err != nil {
				return err
			}
			return adminapi.WriteCheck(c.OutOrStdout(), pc, output)
		},
	}
	check.Flags().StringVar(&from, "from", "", "the source principal (spiffe://…); empty for a plaintext source")
	check.Flags().StringVar(&to, "to", "", "the destination, ip:port of a workload")
	check.Flags().StringVarP(&output, "output", "o", "table", "table, json or yaml")
	check.MarkFlagRequired("to")
	policy := &cobra.Command{Use: "policy", Short: "policy tools"}
	policy.AddCommand(check)
	cmd.AddCommand(policy)
	var wp waypoint.Deployment
	generate := &cobra.Command{
		Use:   "generate",
		Short: "print the Kubernetes objects of a waypoint for a namespace (pipe to kubectl apply -f -)",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			y, err := waypoint.Manifests(wp)
			if err != nil {
				return err
			}
			_, err = c.OutOrStdout().Write(y)
			return err
		},
	}
	generate.Flags().StringVarP(&wp.Namespace, "namespace", "n", "", "the waypoint's namespace (required)")
	generate.Flags().StringVar(&wp.Name, "name", "waypoint", "its name: Service, Deployment and ServiceAccount (its SPIFFE ID)")
	generate.Flags().StringVar(&wp.For, "for", "service", "the traffic it takes: service, workload or all")
	generate.Flags().StringVar(&wp.Image, "image", waypoint.DefaultImage, "the image with amesh-waypoint (make image)")
	generate.Flags().IntVar(&wp.Replicas, "replicas", 1, "its pods")
	generate.MarkFlagRequired("namespace")
	wpCmd := &cobra.Command{Use: "waypoint", Short: "waypoint tools"}
	wpCmd.AddCommand(generate)
	cmd.AddCommand(wpCmd)
	cmd.AddCommand(&cobra.Command{
		Use:   "version",
		Short: "ameshctl's version",
		Args:  cobra.NoArgs,
		Run:   func(c *cobra.Command, _ []string) { fmt.Fprintln(c.OutOrStdout(), "ameshctl", version.Version) },
	})
	cmd.AddCommand(&cobra.Command{
		Use:                "bench",
		Short:              "run the side-by-side benchmark suite in a netns lab (root; bench -h for its flags)",
		DisableFlagParsing: true,
		RunE: func(_ *cobra.Command, args []string) error {
			self, err := os.Executable()
			if err != nil {
				return err
			}
			if code := bench.Main([]string{self, "bench"}, args); code != 0 {
				os.Exit(code)
			}
			return nil
		},
	})
	cmd.SetContext(context.Background())
	return cmd
}
