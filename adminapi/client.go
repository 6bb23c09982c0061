package adminapi

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// DefaultAddr is the agent's admin address on its node (the node's loopback).
const DefaultAddr = "127.0.0.1:15000"

// Client talks to one agent's admin API.
type Client struct {
	// Addr is host:port of the admin API; DefaultAddr when empty.
	Addr string
	// HTTP is the client used; one with a 10 s timeout when nil.
	HTTP *http.Client
}

func (c *Client) do(ctx context.Context, method, path string) ([]byte, error) {
	addr := c.Addr
	if addr == "" {
		addr = DefaultAddr
	}
	hc := c.HTTP
	if hc == nil {
		hc = &http.Client{Timeout: 10 * time.Second}
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://"+addr+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("cannot reach the agent's admin API at %s (is amesh-agent running on this node, with --admin-addr? pass --admin-addr to ameshctl): %w", addr, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err != nil {
		return nil, fmt.Errorf("admin API at %s: %w", addr, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("admin API at %s: %s %s: %s: %s", addr, method, path, resp.Status, strings.TrimSpace(string(b)))
	}
	return b, nil
}

// ConfigDump reads /config_dump.
func (c *Client) ConfigDump(ctx context.Context) (*ConfigDump, error) {
	b, err := c.do(ctx, http.MethodGet, "/config_dump")
	if err != nil {
		return nil, err
	}
	var d ConfigDump
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, fmt.Errorf("admin API: /config_dump: %w", err)
	}
	return &d, nil
}

// LogLevel reads the agent's log level, or sets it first when level is not empty.
func (c *Client) LogLevel(ctx context.Context, level string) (string, error) {
	method, path := http.MethodGet, "/logging"
	if level != "" {
		method, path = http.MethodPost, "/logging?level="+url.QueryEscape(level)
	}
	b, err := c.do(ctx, method, path)
	return strings.TrimSpace(string(b)), err
}

// PolicyCheck asks the agent how its policies decide a connection from the principal from (a
// SPIFFE ID; empty for a plaintext source) to to (ip:port of a workload).
func (c *Client) PolicyCheck(ctx context.Context, from, to string) (*PolicyCheck, error) {
	b, err := c.do(ctx, http.MethodGet, "/policy_check?from="+url.QueryEscape(from)+"&to="+url.QueryEscape(to))
	if err != nil {
		return nil, err
	}
	var pc PolicyCheck
	if err := json.Unmarshal(b, &pc); err != nil {
		return nil, fmt.Errorf("admin API: /policy_check: %w", err)
	}
	return &pc, nil
}
