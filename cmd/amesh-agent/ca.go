package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/amesh-dev/amesh/identity/casecret"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/client-go/dynamic"
)

// createCA is `amesh-agent create-ca`, the deploy/ Job that gives a cluster one built-in CA: it
// creates the Secret the DaemonSet mounts at --ca-dir on every node (so every agent issues from
// the same root, and no agent needs any access to Secrets), or, when the Secret already exists,
// checks that it holds a usable CA and leaves it alone.
func createCA(args []string) int {
	fs := flag.NewFlagSet("amesh-agent create-ca", flag.ContinueOnError)
	secret := fs.String("secret", "amesh-system/amesh-ca", "namespace/name of the Secret to create")
	kubeconfig := fs.String("kubeconfig", env("KUBECONFIG", ""), "kubeconfig (default: in-cluster service account)")
	trustDomain := fs.String("trust-domain", env("AMESH_TRUST_DOMAIN", "cluster.local"), "SPIFFE trust domain of the CA")
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	ns, name, ok := strings.Cut(*secret, "/")
	if !ok || ns == "" || name == "" {
		fmt.Fprintf(os.Stderr, "amesh-agent create-ca: --secret %q: want namespace/name\n", *secret)
		return 2
	}
	td, err := spiffeid.TrustDomainFromString(*trustDomain)
	if err != nil {
		fmt.Fprintf(os.Stderr, "amesh-agent create-ca: --trust-domain %q: %v\n", *trustDomain, err)
		return 2
	}
	rc, err := restConfig(*kubeconfig)
	if err != nil {
		fmt.Fprintln(os.Stderr, "amesh-agent create-ca:", err)
		return 1
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		fmt.Fprintln(os.Stderr, "amesh-agent create-ca:", err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	msg, err := casecret.Ensure(ctx, dyn.Resource(casecret.Resource).Namespace(ns), td, ns, name)
	if err != nil {
		fmt.Fprintln(os.Stderr, "amesh-agent create-ca:", err)
		return 1
	}
	fmt.Println(msg)
	return 0
}
