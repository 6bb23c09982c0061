package agent

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"sort"
	"strconv"
	"time"

	"github.com/amesh-dev/amesh/adminapi"
	"github.com/amesh-dev/amesh/policy"
	"github.com/amesh-dev/amesh/workload"
)

// The admin API, as ztunnel's: /config_dump, /logging, /debug/pprof/*, /quitquitquit. It serves
// on loopback only (the node's, with hostNetwork): whoever reaches it sees every workload and
// can stop the agent, so neither a pod nor another node may.

// checkAdminAddr refuses an admin address that is not a loopback one.
func checkAdminAddr(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("agent: admin address %q: %w", addr, err)
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || !ip.IsLoopback() {
		return fmt.Errorf("agent: admin address %q: it must be a loopback address (127.0.0.1:15000): the admin API shows every workload and stops the agent", addr)
	}
	return nil
}

// adminMux serves the admin API.
func (a *Agent) adminMux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("/config_dump", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(a.configDump(r.Context()))
	})
	mux.HandleFunc("/logging", func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			if a.cfg.LogLevel == nil {
				http.Error(w, "the log level is fixed in this agent", http.StatusNotImplemented)
				return
			}
			var lvl slog.Level
			if err := lvl.UnmarshalText([]byte(r.URL.Query().Get("level"))); err != nil {
				http.Error(w, "level: want debug, info, warn or error: "+err.Error(), http.StatusBadRequest)
				return
			}
			a.cfg.LogLevel.Set(lvl)
			a.log.Info("log level changed", "level", lvl.String())
		}
		level := "fixed"
		if a.cfg.LogLevel != nil {
			level = a.cfg.LogLevel.Level().String()
		}
		fmt.Fprintf(w, "current log level is %s\n", level)
	})
	mux.HandleFunc("/quitquitquit", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			http.Error(w, "POST only", http.StatusMethodNotAllowed)
			return
		}
		fmt.Fprintln(w, "OK")
		a.quitOnce.Do(func() { close(a.quit) })
	})
	mux.HandleFunc("/policy_check", func(w http.ResponseWriter, r *http.Request) {
		from, to := r.URL.Query().Get("from"), r.URL.Query().Get("to")
		dst, err := netip.ParseAddrPort(to)
		if err != nil {
			http.Error(w, "to: want ip:port of a workload: "+err.Error(), http.StatusBadRequest)
			return
		}
		st := a.store.Load()
		wl := st.WorkloadByIP(dst.Addr())
		if wl == nil {
			http.Error(w, "no workload has the address "+dst.Addr().String(), http.StatusNotFound)
			return
		}
		// The very decision the data path makes (decide), on the agent's current state.
		d := a.decide(st, from, &pod{w: wl}, dst.Port())
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(adminapi.PolicyCheck{From: from, To: to, Destination: wl.UID, Allowed: d.Allowed, Policy: d.Policy, Reason: d.Reason})
	})
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

func (a *Agent) configDump(ctx context.Context) adminapi.ConfigDump {
	st := a.store.Load()
	d := adminapi.ConfigDump{Workloads: []adminapi.Workload{}, Services: []adminapi.Service{}, Policies: []adminapi.Policy{}, Certificates: []adminapi.Certificate{}, Connections: []adminapi.Connection{}, KernelPath: []adminapi.Connection{}}
	for _, w := range st.Workloads() {
		_, _, svc, rev := canonical(w)
		dw := adminapi.Workload{UID: w.UID, Name: w.Name, WorkloadName: w.Owner(), Namespace: w.Namespace, ServiceAccount: w.ServiceAccount, Node: w.Node,
			TrustDomain: st.TrustDomain().Name(), ClusterID: cluster, CanonicalName: svc, CanonicalRevision: rev, Status: "Healthy",
			Protocol: "TCP", Waypoint: w.Waypoint}
		if w.Enrolled() {
			dw.Protocol = "HBONE"
		}
		for _, ip := range w.IPs {
			dw.WorkloadIPs = append(dw.WorkloadIPs, ip.String())
		}
		d.Workloads = append(d.Workloads, dw)
	}
	for _, s := range st.Services() {
		ds := adminapi.Service{Name: s.Name, Namespace: s.Namespace, Hostname: s.Name + "." + s.Namespace + ".svc.cluster.local", Ports: map[string]uint16{}, VIPs: []string{}, Endpoints: []string{}}
		for _, v := range s.VIPs {
			ds.VIPs = append(ds.VIPs, cluster+"/"+v.String())
		}
		for _, p := range s.Ports {
			ds.Ports[strconv.Itoa(int(p.Port))] = p.TargetPort
		}
		for _, w := range st.Endpoints(s) {
			ds.Endpoints = append(ds.Endpoints, w.UID)
		}
		d.Services = append(d.Services, ds)
	}
	for _, p := range st.Policies() {
		scope := "Namespace"
		if p.Namespace == st.RootNamespace() {
			scope = "Global"
		}
		if len(p.Selector) > 0 {
			scope = "WorkloadSelector"
		}
		action := "Allow"
		if p.Action == policy.Deny {
			action = "Deny"
		}
		d.Policies = append(d.Policies, adminapi.Policy{Name: p.Name, Namespace: p.Namespace, Scope: scope, Action: action, Selector: p.Selector, Rules: p.Rules})
	}
	for _, h := range a.src.Held() {
		c := adminapi.Certificate{Identity: h.ID.String(), Source: h.Source, Selectors: h.Selectors, State: "Unavailable", CertChain: []adminapi.Cert{}, RootCerts: []adminapi.Cert{}}
		if h.Err != nil {
			c.Detail = h.Err.Error()
		}
		if h.SVID != nil {
			c.State = "Available"
			for _, cert := range h.SVID.Certificates {
				c.CertChain = append(c.CertChain, certOf(cert.Raw, cert.SerialNumber.String(), cert.NotBefore, cert.NotAfter))
			}
			if b, err := a.src.GetX509BundleForTrustDomain(h.ID.TrustDomain()); err == nil {
				for _, cert := range b.X509Authorities() {
					c.RootCerts = append(c.RootCerts, certOf(cert.Raw, cert.SerialNumber.String(), cert.NotBefore, cert.NotAfter))
				}
			}
		}
		d.Certificates = append(d.Certificates, c)
	}
	sort.Slice(d.Certificates, func(i, j int) bool { return d.Certificates[i].Identity < d.Certificates[j].Identity })
	a.open.mu.Lock()
	for c := range a.open.conns {
		d.Connections = append(d.Connections, adminapi.Connection{Src: c.src, Dst: dstName(c.dst), Port: c.port})
	}
	a.open.mu.Unlock()
	a.kernelOpen.mu.Lock()
	for _, c := range a.kernelOpen.conns {
		d.KernelPath = append(d.KernelPath, adminapi.Connection{Src: c.src.String(), Dst: c.dst.String(), Path: "kernel"})
	}
	a.kernelOpen.mu.Unlock()
	return d
}

func dstName(w *workload.Workload) string {
	if w == nil {
		return ""
	}
	return w.UID
}

func certOf(der []byte, serial string, from, to time.Time) adminapi.Cert {
	return adminapi.Cert{PEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})), SerialNumber: serial,
		ValidFrom: from.UTC().Format(time.RFC3339), ExpirationTime: to.UTC().Format(time.RFC3339)}
}
