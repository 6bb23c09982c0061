package waypoint

import (
	"bytes"
	"fmt"
	"regexp"
	"text/template"
)

// Deployment describes a waypoint to run in a cluster: what Manifests writes the Kubernetes
// objects of (`ameshctl waypoint generate`).
type Deployment struct {
	// Namespace is the waypoint's namespace; it serves services and pods of that namespace.
	Namespace string
	// Name is the waypoint's name, that of its Service, Deployment and ServiceAccount (so its
	// SPIFFE ID is .../ns/<Namespace>/sa/<Name>); default "waypoint".
	Name string
	// For is the traffic it is the waypoint of: service (default), workload or all.
	For string
	// Image holds amesh-waypoint (`make image`'s); default DefaultImage.
	Image string
	// Replicas of the waypoint's pods; default 1.
	Replicas int
}

// DefaultImage is the image `make image` builds and deploy/ names.
const DefaultImage = "ghcr.io/amesh-dev/amesh:dev"

var dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// Manifests returns the YAML of d's objects: its ServiceAccount, a ClusterRoleBinding to
// deploy/'s read-only ClusterRole amesh-waypoint, its Service (port 15008, labelled
// amesh.io/waypoint-for) and its Deployment (pods out of the mesh, since they speak HBONE
// themselves; not privileged, no capability, read-only root, not root). The pods issue their
// certificate from the built-in CA, so the namespace needs a copy of the Secret amesh-ca (see the
// README): a trial setup, as the built-in CA is.
func Manifests(d Deployment) ([]byte, error) {
	if d.Name == "" {
		d.Name = "waypoint"
	}
	if d.For == "" {
		d.For = "service"
	}
	if d.Image == "" {
		d.Image = DefaultImage
	}
	if d.Replicas == 0 {
		d.Replicas = 1
	}
	for _, f := range []struct{ what, v string }{{"namespace", d.Namespace}, {"name", d.Name}} {
		if !dnsLabel.MatchString(f.v) {
			return nil, fmt.Errorf("waypoint: %s %q: want a DNS label", f.what, f.v)
		}
	}
	switch d.For {
	case "service", "workload", "all":
	default:
		return nil, fmt.Errorf("waypoint: for %q: want service, workload or all", d.For)
	}
	if d.Replicas < 0 || d.Replicas > 100 {
		return nil, fmt.Errorf("waypoint: replicas %d: want 1 to 100", d.Replicas)
	}
	var b bytes.Buffer
	if err := manifestTemplate.Execute(&b, d); err != nil {
		return nil, fmt.Errorf("waypoint: %w", err)
	}
	return b.Bytes(), nil
}

var manifestTemplate = template.Must(template.New("waypoint").Parse(`# The waypoint {{.Name}} of namespace {{.Namespace}} (ameshctl waypoint generate).
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{.Name}}
  namespace: {{.Namespace}}
  labels: {app.kubernetes.io/name: {{.Name}}, app.kubernetes.io/part-of: amesh}
---
# Read-only, as the agents: the services it serves, their endpoints, the policies that target it.
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: amesh-waypoint:{{.Namespace}}:{{.Name}}
  labels: {app.kubernetes.io/name: {{.Name}}, app.kubernetes.io/part-of: amesh}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: amesh-waypoint}
subjects:
  - {kind: ServiceAccount, name: {{.Name}}, namespace: {{.Namespace}}}
---
apiVersion: v1
kind: Service
metadata:
  name: {{.Name}}
  namespace: {{.Namespace}}
  labels: {app.kubernetes.io/name: {{.Name}}, app.kubernetes.io/part-of: amesh, amesh.io/waypoint-for: {{.For}}}
spec:
  selector: {amesh.io/waypoint: {{.Name}}}
  ports:
    - {name: hbone, port: 15008, targetPort: 15008, appProtocol: https}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{.Name}}
  namespace: {{.Namespace}}
  labels: {app.kubernetes.io/name: {{.Name}}, app.kubernetes.io/part-of: amesh}
spec:
  replicas: {{.Replicas}}
  selector:
    matchLabels: {amesh.io/waypoint: {{.Name}}}
  template:
    metadata:
      labels:
        amesh.io/waypoint: {{.Name}}
        app.kubernetes.io/name: {{.Name}}
        # It speaks HBONE itself: the node agents do not capture its traffic.
        amesh.io/dataplane-mode: none
    spec:
      serviceAccountName: {{.Name}}
      terminationGracePeriodSeconds: 5
      securityContext:
        runAsNonRoot: true
        runAsUser: 65532
        runAsGroup: 65532
        fsGroup: 65532
        seccompProfile: {type: RuntimeDefault}
      containers:
        - name: waypoint
          image: {{.Image}}
          imagePullPolicy: IfNotPresent
          command: [amesh-waypoint]
          args: [--kube, --name, {{.Name}}, --service-account, {{.Name}}, --namespace, $(POD_NAMESPACE), --listen, ":15008"]
          env:
            - name: POD_NAMESPACE
              valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
          ports:
            - {name: hbone, containerPort: 15008}
          readinessProbe:
            tcpSocket: {port: 15008}
            periodSeconds: 2
          resources:
            requests: {cpu: 10m, memory: 32Mi}
            limits: {memory: 256Mi}
          securityContext:
            privileged: false
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities: {drop: [ALL]}
          volumeMounts:
            - {name: ca, mountPath: /var/lib/amesh/ca, readOnly: true}
      volumes:
        # The built-in CA, copied into this namespace (README: Waypoints in Kubernetes).
        - name: ca
          secret: {secretName: amesh-ca, defaultMode: 0440}
`))
