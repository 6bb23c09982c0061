package k8s

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"go.yaml.in/yaml/v3"
	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
)

// policyGVR is the AuthorizationPolicy resource of deploy/crd.yaml.
var policyGVR = schema.GroupVersionResource{Group: "security.amesh.io", Version: "v1", Resource: "authorizationpolicies"}

// deployDir is the repository's deploy/, which these tests apply as a user would.
func deployDir(t *testing.T) string {
	t.Helper()
	tools, err := ToolsDir()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(tools, "..", "..", "..", "deploy")
}

// deployed applies deploy/ once to the shared control plane.
var deployed struct {
	once sync.Once
	out  string
	err  error
}

// deploy returns the shared control plane with `kubectl apply -k deploy/` done (strict
// server-side field validation) and the CRD established.
func deploy(t *testing.T) *ControlPlane {
	t.Helper()
	cp := sharedControlPlane(t)
	dir := deployDir(t)
	deployed.once.Do(func() {
		ctx := testContext(t)
		out, err := cp.Kubectl(ctx, "", "apply", "--validate=strict", "-k", dir)
		deployed.out = string(out)
		if err != nil {
			deployed.err = err
			return
		}
		_, deployed.err = cp.Kubectl(ctx, "", "wait", "--for=condition=Established", "--timeout=30s",
			"customresourcedefinition/authorizationpolicies.security.amesh.io")
	})
	if deployed.err != nil {
		t.Fatalf("kubectl apply -k %s: %v", dir, deployed.err)
	}
	return cp
}

// TestDeployRenders checks that `kubectl kustomize deploy/` renders exactly the installation,
// without the example.
func TestDeployRenders(t *testing.T) {
	bin, err := EnsureBinaries(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin.Kubectl, "kustomize", deployDir(t)).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl kustomize: %v: %s", err, out)
	}
	var got []string
	dec := yaml.NewDecoder(bytes.NewReader(out))
	for {
		var obj struct {
			Kind     string
			Metadata struct{ Name, Namespace string }
		}
		if err := dec.Decode(&obj); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("rendered YAML: %v", err)
		}
		got = append(got, obj.Kind+" "+obj.Metadata.Namespace+"/"+obj.Metadata.Name)
	}
	slices.Sort(got)
	want := []string{
		"ClusterRole /amesh-agent",
		"ClusterRole /amesh-waypoint",
		"ClusterRoleBinding /amesh-agent",
		"CustomResourceDefinition /authorizationpolicies.security.amesh.io",
		"DaemonSet amesh-system/amesh-agent",
		"Job amesh-system/amesh-ca-init",
		"Namespace /amesh-system",
		"Role amesh-system/amesh-agent",
		"Role amesh-system/amesh-ca-init",
		"RoleBinding amesh-system/amesh-agent",
		"RoleBinding amesh-system/amesh-ca-init",
		"ServiceAccount amesh-system/amesh-agent",
		"ServiceAccount amesh-system/amesh-ca-init",
	}
	if !slices.Equal(got, want) {
		t.Errorf("kubectl kustomize renders\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestDeployApply applies deploy/ (see deploy) and checks what the API server stored: the
// DaemonSet is accepted as written (the API refuses, say, Bidirectional mount propagation in an
// unprivileged container, or allowPrivilegeEscalation false with CAP_SYS_ADMIN), applying again
// changes nothing, and the example namespace and its policy are accepted.
func TestDeployApply(t *testing.T) {
	cp := deploy(t)
	ctx := testContext(t)
	for _, want := range []string{
		"namespace/amesh-system", "customresourcedefinition.apiextensions.k8s.io/authorizationpolicies.security.amesh.io",
		"serviceaccount/amesh-agent", "clusterrole.rbac.authorization.k8s.io/amesh-agent",
		"clusterrolebinding.rbac.authorization.k8s.io/amesh-agent", "daemonset.apps/amesh-agent",
	} {
		if !strings.Contains(deployed.out, want) {
			t.Errorf("kubectl apply -k did not mention %s:\n%s", want, deployed.out)
		}
	}
	out, err := cp.Kubectl(ctx, "", "apply", "--validate=strict", "-k", deployDir(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if !strings.HasSuffix(line, " unchanged") {
			t.Errorf("applying deploy/ again changed something: %q", line)
		}
	}

	cs, err := cp.Clientset("")
	if err != nil {
		t.Fatal(err)
	}
	ds, err := cs.AppsV1().DaemonSets("amesh-system").Get(ctx, "amesh-agent", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get the DaemonSet: %v", err)
	}
	// A rollout starts the new agent beside the old one (it takes its sockets over), so no
	// node is ever without an agent; a hostPort would keep the scheduler from placing it.
	if ru := ds.Spec.UpdateStrategy.RollingUpdate; ru == nil || ru.MaxSurge == nil || ru.MaxSurge.IntValue() != 1 ||
		ru.MaxUnavailable == nil || ru.MaxUnavailable.IntValue() != 0 {
		t.Errorf("update strategy %+v: want maxSurge 1, maxUnavailable 0", ds.Spec.UpdateStrategy)
	}
	spec := ds.Spec.Template.Spec
	for _, c := range spec.Containers {
		if len(c.Ports) > 0 {
			t.Errorf("container %s declares ports %+v: with hostNetwork they are hostPorts, which block the surge pod", c.Name, c.Ports)
		}
	}
	if !spec.HostNetwork || spec.DNSPolicy != corev1.DNSClusterFirstWithHostNet || spec.ServiceAccountName != "amesh-agent" ||
		spec.PriorityClassName != "system-node-critical" || len(spec.Tolerations) != 1 || spec.Tolerations[0].Operator != corev1.TolerationOpExists {
		t.Errorf("pod spec: hostNetwork %v, dnsPolicy %s, serviceAccount %q, priorityClass %q, tolerations %+v",
			spec.HostNetwork, spec.DNSPolicy, spec.ServiceAccountName, spec.PriorityClassName, spec.Tolerations)
	}
	if len(spec.InitContainers) != 1 || !slices.Equal(spec.InitContainers[0].Args, []string{"install-cni", "--cni-bin-dir", "/host/opt/cni/bin", "--cni-conf-dir", "/host/etc/cni/net.d"}) {
		t.Errorf("init containers: %+v", spec.InitContainers)
	}
	if len(spec.Containers) != 2 || spec.Containers[0].Name != "amesh-agent" || spec.Containers[1].Name != "cni" {
		t.Fatalf("containers %d, want amesh-agent and cni", len(spec.Containers))
	}
	c := spec.Containers[0]
	if !slices.Equal(c.Args, []string{"--kube", "--node=$(NODE_NAME)", "--health-addr=$(HOST_IP):15021", "--pod=$(POD_NAMESPACE)/$(POD_NAME)"}) ||
		c.Env[0].Name != "NODE_NAME" || c.Env[0].ValueFrom.FieldRef.FieldPath != "spec.nodeName" ||
		c.Env[1].Name != "HOST_IP" || c.Env[1].ValueFrom.FieldRef.FieldPath != "status.hostIP" {
		t.Errorf("agent args %q, env %+v", c.Args, c.Env)
	}
	// The agent: not privileged, exactly three capabilities, nothing gained by exec, a read-only
	// root; install-cni: no capability at all. (Unset fields count as their insecure default.)
	sc := c.SecurityContext
	if sc == nil || sc.Capabilities == nil {
		t.Fatalf("agent securityContext %+v: want one with capabilities", sc)
	}
	var added []string
	for _, capability := range sc.Capabilities.Add {
		added = append(added, string(capability))
	}
	slices.Sort(added)
	if deref(sc.Privileged, true) || !deref(sc.ReadOnlyRootFilesystem, false) || deref(sc.RunAsUser, -1) != 0 || deref(sc.AllowPrivilegeEscalation, true) ||
		!slices.Equal(added, []string{"BPF", "NET_ADMIN", "SYS_ADMIN"}) || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("agent securityContext: privileged %v, readOnlyRootFilesystem %v, runAsUser %v, allowPrivilegeEscalation %v, add %q, drop %q",
			deref(sc.Privileged, true), deref(sc.ReadOnlyRootFilesystem, false), deref(sc.RunAsUser, -1), deref(sc.AllowPrivilegeEscalation, true), added, sc.Capabilities.Drop)
	}
	for _, cc := range []corev1.Container{spec.InitContainers[0], spec.Containers[1]} {
		if isc := cc.SecurityContext; isc == nil || isc.Capabilities == nil || deref(isc.Privileged, true) ||
			deref(isc.AllowPrivilegeEscalation, true) || len(isc.Capabilities.Add) > 0 || !deref(isc.ReadOnlyRootFilesystem, false) {
			t.Errorf("%s securityContext: %+v", cc.Name, isc)
		}
	}
	// The node's CNI directories are writable only in the containers without a capability: the
	// agent's container does not mount them (host /proc/sys/net it does, for its pods' net
	// sysctls, which only a thread in their netns can reach).
	cniVolumes := map[string]bool{}
	for _, v := range spec.Volumes {
		if v.HostPath != nil && (v.HostPath.Path == "/opt/cni/bin" || v.HostPath.Path == "/etc/cni/net.d") {
			cniVolumes[v.Name] = true
		}
	}
	if len(cniVolumes) != 2 {
		t.Errorf("volumes for the CNI directories: %v, want two", cniVolumes)
	}
	for _, m := range c.VolumeMounts {
		if cniVolumes[m.Name] {
			t.Errorf("the agent's container mounts %s (%s): the CNI directories belong to the cni container", m.Name, m.MountPath)
		}
	}
	if keep := spec.Containers[1]; !slices.Equal(keep.Args, []string{"keep-cni", "--cni-bin-dir=/host/opt/cni/bin", "--cni-conf-dir=/host/etc/cni/net.d", "--pod=$(POD_NAMESPACE)/$(POD_NAME)"}) || len(keep.VolumeMounts) != 2 {
		t.Errorf("cni container args %q, mounts %+v", keep.Args, keep.VolumeMounts)
	}

	// The example: a namespace in the mesh, and its policy, shown by kubectl with its action.
	if out, err := cp.Kubectl(ctx, "", "apply", "--validate=strict", "-f", filepath.Join(deployDir(t), "example-namespace.yaml")); err != nil {
		t.Fatalf("apply example-namespace.yaml: %v", err)
	} else if !strings.Contains(string(out), "authorizationpolicy.security.amesh.io/checkout-from-frontend") {
		t.Errorf("apply example-namespace.yaml: %s", out)
	}
	out, err = cp.Kubectl(ctx, "", "get", "amap", "-n", "shop")
	if err != nil || !strings.Contains(string(out), "ACTION") || !strings.Contains(string(out), "ALLOW") {
		t.Errorf("kubectl get amap -n shop: %v:\n%s", err, out)
	}
	ns, err := cs.CoreV1().Namespaces().Get(ctx, "shop", metav1.GetOptions{})
	if err != nil || ns.Labels["amesh.io/dataplane-mode"] != "ambient" {
		t.Errorf("namespace shop: %v, labels %v", err, ns.GetLabels())
	}
}

// TestAuthorizationPolicySchema checks deploy/crd.yaml's schema with the API server's own
// validation (kubectl apply --dry-run=server, strict): policies amesh can enforce are accepted,
// and each policy it could not enforce as written is refused with a message that says why.
func TestAuthorizationPolicySchema(t *testing.T) {
	cp := deploy(t)
	cs, err := cp.Clientset("")
	if err != nil {
		t.Fatal(err)
	}
	ns := uniqueName("schema")
	if _, err := cs.CoreV1().Namespaces().Create(testContext(t), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	const head = "apiVersion: security.amesh.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\n"

	valid := []struct{ name, spec, action string }{
		{"no spec", "", ""},
		{"empty spec: ALLOW by default, no rules: deny all", "spec: {}", "ALLOW"},
		{"allow all", "spec: {rules: [{}]}", "ALLOW"},
		{"every field", `spec:
  selector: {matchLabels: {app: checkout, app.kubernetes.io/version: v1}}
  action: DENY
  rules:
  - from:
    - source:
        principals: [cluster.local/ns/shop/sa/frontend, "spiffe://cluster.local/ns/shop/sa/cart", "cluster.local/ns/ops/*", "*"]
        notPrincipals: ["*/sa/legacy"]
        namespaces: [shop, "team-*", "*-prod"]
        notNamespaces: [kube-system]
    to:
    - operation: {ports: ["1", "80", "8080", "65535"], notPorts: ["9090"]}
  - to:
    - operation: {notPorts: ["22"]}`, "DENY"},
		{"a waypoint's, with L7 fields", `spec:
  targetRefs: [{kind: Service, name: wp}, {group: gateway.networking.k8s.io, kind: Gateway, name: wp}]
  action: DENY
  rules:
  - to:
    - operation: {methods: [DELETE], paths: ["/admin*"], hosts: ["*.svc.cluster.local"], notPaths: ["/admin/health"]}
    when:
    - {key: "request.headers[x-debug]", values: ["*"]}`, "DENY"},
	}
	for _, c := range valid {
		t.Run("valid/"+c.name, func(t *testing.T) {
			t.Parallel()
			out, err := applyDryRun(t, cp, ns, head+c.spec, "-o", "jsonpath={.spec.action}")
			if err != nil {
				t.Fatalf("refused: %v", err)
			}
			if string(out) != c.action {
				t.Errorf("stored action %q, want %q", out, c.action)
			}
		})
	}

	invalid := []struct{ name, spec, want string }{
		{"unknown field", "spec: {rules: [{to: [{operation: {ports: [\"80\"], verbs: [GET]}}]}]}",
			`unknown field "spec.rules[0].to[0].operation.verbs"`},
		{"unknown field in selector", "spec: {selector: {matchExpressions: []}}",
			`unknown field "spec.selector.matchExpressions"`},
		{"L7 methods", "spec: {rules: [{to: [{operation: {ports: [\"80\"], methods: [GET]}}]}]}",
			"amesh enforces AuthorizationPolicy at L4 only: hosts, methods and paths"},
		{"L7 paths", "spec: {rules: [{to: [{operation: {paths: [/health]}}]}]}",
			"amesh enforces AuthorizationPolicy at L4 only: hosts, methods and paths"},
		{"when", `spec: {rules: [{when: [{key: "request.headers[x-user]", values: ["y"]}]}]}`,
			`"when" conditions are L7; set targetRefs to a waypoint`},
		{"requestPrincipals", "spec: {rules: [{from: [{source: {requestPrincipals: [\"*\"]}}]}]}",
			"requestPrincipals (JWT, L7)"},
		{"ipBlocks", "spec: {rules: [{from: [{source: {principals: [\"*\"], ipBlocks: [10.0.0.0/8]}}]}]}",
			"ipBlocks"},
		{"targetRef", "spec: {targetRef: {kind: Service, name: checkout}}",
			"amesh does not support provider (CUSTOM action) nor targetRef"},
		{"targetRefs and selector", "spec: {targetRefs: [{kind: Service, name: wp}], selector: {matchLabels: {app: a}}}",
			"targetRefs and selector are exclusive"},
		{"targetRefs to a Pod", "spec: {targetRefs: [{kind: Pod, name: wp}]}", `Unsupported value: "Pod"`},
		{"action AUDIT", "spec: {action: AUDIT}", `Unsupported value: "AUDIT": supported values: "ALLOW", "DENY"`},
		{"action CUSTOM", "spec: {action: CUSTOM}", `Unsupported value: "CUSTOM"`},
		{"port 0", `spec: {rules: [{to: [{operation: {ports: ["0"]}}]}]}`, "spec.rules[0].to[0].operation.ports[0] in body should match"},
		{"port 70000", `spec: {rules: [{to: [{operation: {ports: ["70000"]}}]}]}`, "spec.rules[0].to[0].operation.ports[0] in body should match"},
		{"port 65536", `spec: {rules: [{to: [{operation: {notPorts: ["65536"]}}]}]}`, "spec.rules[0].to[0].operation.notPorts[0] in body should match"},
		{"port range", `spec: {rules: [{to: [{operation: {ports: ["80-90"]}}]}]}`, "spec.rules[0].to[0].operation.ports[0] in body should match"},
		{"port name", `spec: {rules: [{to: [{operation: {ports: ["abc"]}}]}]}`, "spec.rules[0].to[0].operation.ports[0] in body should match"},
		{"port leading zero", `spec: {rules: [{to: [{operation: {ports: ["080"]}}]}]}`, "spec.rules[0].to[0].operation.ports[0] in body should match"},
		{"port as a number", `spec: {rules: [{to: [{operation: {ports: [80]}}]}]}`, `spec.rules[0].to[0].operation.ports[0]: Invalid value: "integer": spec.rules[0].to[0].operation.ports[0] in body must be of type string`},
		{"empty source", "spec: {rules: [{from: [{source: {}}]}]}", "source must set at least one of principals, notPrincipals, namespaces, notNamespaces"},
		{"source of empty lists", "spec: {rules: [{from: [{source: {principals: [], namespaces: []}}]}]}", "source must set at least one of"},
		{"from without source", "spec: {rules: [{from: [{}]}]}", "spec.rules[0].from[0].source: Required value"},
		{"empty operation", "spec: {rules: [{to: [{operation: {}}]}]}", "operation must set ports or notPorts"},
		{"empty principal", `spec: {rules: [{from: [{source: {principals: [""]}}]}]}`, "spec.rules[0].from[0].source.principals[0] in body should be at least 1 chars long"},
		{"principal with two wildcards", `spec: {rules: [{from: [{source: {principals: ["*/ns/*"]}}]}]}`, "spec.rules[0].from[0].source.principals[0] in body should match"},
		{"namespace in capitals", `spec: {rules: [{from: [{source: {namespaces: [Shop]}}]}]}`, "spec.rules[0].from[0].source.namespaces[0] in body should match"},
		{"label value too long", "spec: {selector: {matchLabels: {app: " + strings.Repeat("x", 64) + "}}}", "may not be more than 63 bytes"},
	}
	for _, c := range invalid {
		t.Run("invalid/"+c.name, func(t *testing.T) {
			t.Parallel()
			out, err := applyDryRun(t, cp, ns, head+c.spec)
			if err == nil {
				t.Fatalf("accepted:\n%s", out)
			}
			if !strings.Contains(string(out), c.want) {
				t.Errorf("refused, but the message lacks %q:\n%s", c.want, out)
			}
		})
	}

	// A client that does not ask for strict validation (client-go's default is Warn) has unknown
	// fields pruned, silently but for a warning. The fields of Istio's that amesh does not enforce
	// are refused all the same, and a misspelt field leaves an empty source, which is refused too.
	dc, err := cp.Dynamic("")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		rule map[string]any
		want string
	}{
		{"methods", map[string]any{"to": []any{map[string]any{"operation": map[string]any{"ports": []any{"80"}, "methods": []any{"GET"}}}}}, "L4 only"},
		{"misspelt principals", map[string]any{"from": []any{map[string]any{"source": map[string]any{"principal": []any{"cluster.local/ns/a/sa/b"}}}}}, "source must set at least one of"},
	} {
		for _, fv := range []string{"Ignore", "Warn"} {
			u := &unstructured.Unstructured{Object: map[string]any{
				"apiVersion": "security.amesh.io/v1", "kind": "AuthorizationPolicy",
				"metadata": map[string]any{"name": "lax"},
				"spec":     map[string]any{"rules": []any{c.rule}},
			}}
			_, err := dc.Resource(policyGVR).Namespace(ns).Create(testContext(t), u, metav1.CreateOptions{FieldValidation: fv, DryRun: []string{metav1.DryRunAll}})
			if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("%s with fieldValidation=%s: %v; want Invalid with %q", c.name, fv, err, c.want)
			}
		}
	}
}

// applyDryRun runs `kubectl apply --dry-run=server --validate=strict -f -` with manifest in ns.
func applyDryRun(t *testing.T, cp *ControlPlane, ns, manifest string, args ...string) ([]byte, error) {
	t.Helper()
	cmd, err := cp.KubectlCommand(testContext(t), "", append([]string{"apply", "--dry-run=server", "--validate=strict", "-n", ns, "-f", "-"}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdin = strings.NewReader(manifest)
	return cmd.CombinedOutput()
}

// TestAgentRBAC checks deploy/rbac.yaml with the token of the agent's ServiceAccount: it may read
// (get, list, watch) pods, namespaces, services, endpointslices and authorizationpolicies, and
// nothing else at all.
func TestAgentRBAC(t *testing.T) {
	cp := deploy(t)
	ctx := testContext(t)
	admin, err := cp.Clientset("")
	if err != nil {
		t.Fatal(err)
	}
	ns := uniqueName("rbac")
	pod := createPod(t, admin, ns, "node1")
	if _, err := admin.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "s"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	token, err := cp.Token(agentUser.Name)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := cp.Clientset(token)
	if err != nil {
		t.Fatal(err)
	}
	dc, err := cp.Dynamic(token)
	if err != nil {
		t.Fatal(err)
	}

	review, err := cs.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("self subject review: %v", err)
	}
	if ui := review.Status.UserInfo; ui.Username != agentUser.Name || !containsAll(ui.Groups, agentUser.Groups...) {
		t.Fatalf("the agent's token authenticates as %q %q, want %q %q", ui.Username, ui.Groups, agentUser.Name, agentUser.Groups)
	}

	all := metav1.ListOptions{}
	allowed := []struct {
		name  string
		list  func() error
		watch func() (watch.Interface, error)
	}{
		{"pods", func() error { _, err := cs.CoreV1().Pods("").List(ctx, all); return err },
			func() (watch.Interface, error) { return cs.CoreV1().Pods("").Watch(ctx, all) }},
		{"namespaces", func() error { _, err := cs.CoreV1().Namespaces().List(ctx, all); return err },
			func() (watch.Interface, error) { return cs.CoreV1().Namespaces().Watch(ctx, all) }},
		{"services", func() error { _, err := cs.CoreV1().Services("").List(ctx, all); return err },
			func() (watch.Interface, error) { return cs.CoreV1().Services("").Watch(ctx, all) }},
		{"endpointslices", func() error { _, err := cs.DiscoveryV1().EndpointSlices("").List(ctx, all); return err },
			func() (watch.Interface, error) { return cs.DiscoveryV1().EndpointSlices("").Watch(ctx, all) }},
		{"authorizationpolicies", func() error { _, err := dc.Resource(policyGVR).List(ctx, all); return err },
			func() (watch.Interface, error) { return dc.Resource(policyGVR).Watch(ctx, all) }},
	}
	for _, a := range allowed {
		if err := a.list(); err != nil {
			t.Errorf("list %s in all namespaces: %v", a.name, err)
		}
		w, err := a.watch()
		if err != nil {
			t.Errorf("watch %s in all namespaces: %v", a.name, err)
			continue
		}
		w.Stop()
	}
	if _, err := cs.CoreV1().Pods(ns).Get(ctx, pod, metav1.GetOptions{}); err != nil {
		t.Errorf("get pod: %v", err)
	}

	forbidden := []struct {
		name string
		do   func() error
	}{
		{"create pod", func() error {
			_, err := cs.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "x"},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "x", Image: "x"}}}}, metav1.CreateOptions{})
			return err
		}},
		{"patch pod status", func() error {
			_, err := cs.CoreV1().Pods(ns).Patch(ctx, pod, types.MergePatchType, []byte(`{"status":{"podIP":"10.0.0.9"}}`), metav1.PatchOptions{}, "status")
			return err
		}},
		{"delete pod", func() error { return cs.CoreV1().Pods(ns).Delete(ctx, pod, metav1.DeleteOptions{}) }},
		{"get secret", func() error { _, err := cs.CoreV1().Secrets(ns).Get(ctx, "s", metav1.GetOptions{}); return err }},
		{"list secrets", func() error { _, err := cs.CoreV1().Secrets("").List(ctx, all); return err }},
		{"list configmaps", func() error { _, err := cs.CoreV1().ConfigMaps("").List(ctx, all); return err }},
		{"list nodes", func() error { _, err := cs.CoreV1().Nodes().List(ctx, all); return err }},
		{"get node", func() error { _, err := cs.CoreV1().Nodes().Get(ctx, "node1", metav1.GetOptions{}); return err }},
		{"delete namespace", func() error { return cs.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{}) }},
		{"create authorizationpolicy", func() error {
			u := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "security.amesh.io/v1", "kind": "AuthorizationPolicy", "metadata": map[string]any{"name": "x"}}}
			_, err := dc.Resource(policyGVR).Namespace(ns).Create(ctx, u, metav1.CreateOptions{})
			return err
		}},
		{"update event", func() error {
			_, err := cs.CoreV1().Events(ns).Update(ctx, &corev1.Event{ObjectMeta: metav1.ObjectMeta{Name: "e"}, InvolvedObject: corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: pod}}, metav1.UpdateOptions{})
			return err
		}},
		{"delete event", func() error { return cs.CoreV1().Events(ns).Delete(ctx, "e", metav1.DeleteOptions{}) }},
	}
	for _, f := range forbidden {
		if err := f.do(); !apierrors.IsForbidden(err) {
			t.Errorf("%s: %v, want Forbidden", f.name, err)
		}
	}

	// Everything the token may do, as the API server itself lists it, is that and what the
	// default roles give another ServiceAccount of the same namespace (the self reviews of
	// system:basic-user, say): nothing else is bound to the agent.
	want := map[string]bool{}
	for _, res := range []string{"pods.", "namespaces.", "services.", "endpointslices.discovery.k8s.io", "authorizationpolicies.security.amesh.io"} {
		for _, v := range []string{"get", "list", "watch"} {
			want[v+" "+res] = true
		}
	}
	// Its one write: Events about pods (a failed enrollment, podevents), as the kubelet's.
	want["create events."] = true
	baseline := resourceRules(t, cp, baselineUser.Name, ns)
	for r := range want {
		if baseline[r] {
			t.Errorf("any ServiceAccount may %s: this test cannot tell the agent's role gives it", r)
		}
	}
	var extra, missing []string
	for r := range resourceRules(t, cp, agentUser.Name, ns) {
		if !want[r] && !baseline[r] {
			extra = append(extra, r)
		}
		delete(want, r)
	}
	for r := range want {
		missing = append(missing, r)
	}
	slices.Sort(extra)
	slices.Sort(missing)
	if len(extra)+len(missing) > 0 {
		t.Errorf("the agent may also %q, and may not %q", extra, missing)
	}

	// kubectl agrees, as a user would ask it.
	if out, err := cp.Kubectl(ctx, token, "auth", "can-i", "watch", "endpointslices.discovery.k8s.io", "--all-namespaces"); err != nil || strings.TrimSpace(string(out)) != "yes" {
		t.Errorf("kubectl auth can-i watch endpointslices: %q, %v; want yes", out, err)
	}
	if out, err := cp.Kubectl(ctx, token, "auth", "can-i", "create", "pods", "-n", ns); err == nil || strings.TrimSpace(string(out)) != "no" {
		t.Errorf("kubectl auth can-i create pods: %q, %v; want no (and exit status 1)", out, err)
	}
	// Its own DaemonSet, by name (--pod: uninstall when it is gone), and no other.
	if out, err := cp.Kubectl(ctx, token, "auth", "can-i", "get", "daemonsets.apps/amesh-agent", "-n", "amesh-system"); err != nil || strings.TrimSpace(string(out)) != "yes" {
		t.Errorf("kubectl auth can-i get daemonset amesh-agent: %q, %v; want yes", out, err)
	}
	for _, args := range [][]string{{"list", "daemonsets.apps", "-n", "amesh-system"}, {"get", "daemonsets.apps/other", "-n", "amesh-system"}, {"get", "daemonsets.apps/amesh-agent", "-n", ns}} {
		if out, err := cp.Kubectl(ctx, token, append([]string{"auth", "can-i"}, args...)...); err == nil || strings.TrimSpace(string(out)) != "no" {
			t.Errorf("kubectl auth can-i %q: %q, %v; want no", args, out, err)
		}
	}
}

// resourceRules returns what user may do in ns, as "verb resource.group", by the API server's
// SelfSubjectRulesReview.
func resourceRules(t *testing.T, cp *ControlPlane, user, ns string) map[string]bool {
	t.Helper()
	token, err := cp.Token(user)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := cp.Clientset(token)
	if err != nil {
		t.Fatal(err)
	}
	review, err := cs.AuthorizationV1().SelfSubjectRulesReviews().Create(testContext(t), &authorizationv1.SelfSubjectRulesReview{
		Spec: authorizationv1.SelfSubjectRulesReviewSpec{Namespace: ns}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("self subject rules review of %s: %v", user, err)
	}
	if review.Status.Incomplete {
		t.Fatalf("self subject rules review of %s is incomplete: %s", user, review.Status.EvaluationError)
	}
	out := map[string]bool{}
	for _, r := range review.Status.ResourceRules {
		if len(r.ResourceNames) > 0 {
			t.Errorf("%s: rule limited to names %q: %+v", user, r.ResourceNames, r)
		}
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				for _, v := range r.Verbs {
					out[v+" "+res+"."+g] = true
				}
			}
		}
	}
	return out
}

// deref returns *p, or def when p is nil.
func deref[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

// TestDeploySPIREComponent renders deploy/ with components/spire, as a user's overlay would:
// the agent asks the node's SPIRE agent (--identity=spire) through its admin socket, mounted
// from the node.
func TestDeploySPIREComponent(t *testing.T) {
	bin, err := EnsureBinaries(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	overlay := t.TempDir()
	rel, err := filepath.Rel(overlay, deployDir(t)) // kustomize takes relative paths only
	if err != nil {
		t.Fatal(err)
	}
	k := fmt.Sprintf("resources: [%s]\ncomponents: [%s]\n", rel, filepath.Join(rel, "components", "spire"))
	if err := os.WriteFile(filepath.Join(overlay, "kustomization.yaml"), []byte(k), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin.Kubectl, "kustomize", overlay).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl kustomize: %v: %s", err, out)
	}
	type mount struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
	}
	type volume struct {
		Name     string `yaml:"name"`
		HostPath struct {
			Path string `yaml:"path"`
		} `yaml:"hostPath"`
	}
	dec := yaml.NewDecoder(bytes.NewReader(out))
	for {
		var obj struct {
			Kind string
			Spec struct {
				Template struct {
					Spec struct {
						Containers []struct {
							Name         string
							Args         []string
							VolumeMounts []mount `yaml:"volumeMounts"`
						}
						Volumes []volume
					}
				}
			}
		}
		if err := dec.Decode(&obj); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("rendered YAML: %v", err)
		}
		if obj.Kind != "DaemonSet" {
			continue
		}
		agent := obj.Spec.Template.Spec.Containers[0]
		if !slices.Contains(agent.Args, "--identity=spire") || !slices.Contains(agent.Args, "--spire-admin-socket=/run/spire/admin/admin.sock") {
			t.Errorf("agent args %q: want --identity=spire and the admin socket", agent.Args)
		}
		mounted := slices.ContainsFunc(agent.VolumeMounts, func(m mount) bool {
			return m.Name == "spire-admin" && m.MountPath == "/run/spire/admin"
		})
		hosted := slices.ContainsFunc(obj.Spec.Template.Spec.Volumes, func(v volume) bool {
			return v.Name == "spire-admin" && v.HostPath.Path == "/run/spire/admin"
		})
		if !mounted || !hosted {
			t.Errorf("the SPIRE admin socket's directory is not mounted from the node: mounts %+v, volumes %+v", agent.VolumeMounts, obj.Spec.Template.Spec.Volumes)
		}
		return
	}
	t.Fatal("no DaemonSet rendered")
}
