// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* amesh in-pod redirection (DESIGN §2):
 *  - cgroup/connect4, cgroup/connect6 at the cgroup v2 root: an enrolled pod's TCP connect() is
 *    rewritten to the agent's listener on 127.0.0.1:15001 (::1 for IPv6) in the pod's own netns;
 *    the original destination is kept by socket cookie.
 *  - sockops: once that connection is established, the original destination is re-keyed by
 *    {netns cookie, client ip, client port}, which the agent can look up from accept().
 *  - sk_lookup, attached to each enrolled pod's netns: TCP arriving for the pod's IP goes to the
 *    agent's :15008 (HBONE) or :15006 (anything else) listener there; no listener means drop.
 *  - cgroup/getpeername4, getpeername6: a captured app sees its original destination as peer.
 * Only netns cookies in `enrolled` are touched: the host and other namespaces are left alone. */
#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/socket.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "amesh.h"

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif
#define LOOPBACK_IFINDEX 1

/* Context fields must be read 32 bits at a time: without volatile, clang merges neighbouring
 * words of an IPv6 address into one 64-bit load, which the verifier refuses. */
#define READ32(x) (*(volatile __u32 *)&(x))

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Keeps struct conn_event in BTF for bpf2go -type (it only crosses the ring buffer). */
const struct conn_event *unused_conn_event __attribute__((unused));

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u64);
	__type(value, struct enrolled_pod);
	__uint(max_entries, 4096);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} enrolled SEC(".maps");

/* The agent's own sockets, by socket cookie, registered by the agent just before their
 * connect() and consumed by it: the capture leaves exactly these alone (the passthrough and
 * HBONE dials it makes from inside a pod's netns). LRU, so a registered socket that never
 * connects cannot fill it. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, __u64);
	__type(value, __u8);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} agent_socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, __u64);
	__type(value, struct orig_dst);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} orig_by_cookie SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct tuple_key);
	__type(value, struct orig_dst);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} orig_by_tuple SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__type(key, struct listener_key);
	__type(value, __u64);
	__uint(max_entries, 8192);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} listeners SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct pass_key);
	__type(value, __u8);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} passthrough SEC(".maps");

/* The pods' probe ports, for the node's own connects to them (see probe_source). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct probe_dst);
	__type(value, __u8);
	__uint(max_entries, 16384);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} probe_dsts SEC(".maps");

/* The netns cookie of the node (the agent's own namespace), set by the agent. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} node_netns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct probe_key);
	__type(value, __u8);
	__uint(max_entries, 16384);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} probe_exempt SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct verdict_key);
	__type(value, __u8);
	__uint(max_entries, 16384);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} local_verdicts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} heartbeat SEC(".maps");

/* Short-circuited sockets, by socket cookie: the 4-tuple let past sk_lookup for them. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, __u64);
	__type(value, struct pass_key);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} kernel_socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, STAT_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} stats SEC(".maps");

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &idx);
	if (v)
		*v += 1;
}

static __always_inline int is_loopback4(__u32 ip_be)
{
	return (bpf_ntohl(ip_be) >> 24) == 127;
}

/* common checks: TCP, not one of the agent's own sockets (agent_socks), from an enrolled netns. */
static __always_inline struct enrolled_pod *enrolled_tcp(struct bpf_sock_addr *ctx)
{
	if (ctx->type != 1 /* SOCK_STREAM */ || (ctx->protocol != 0 && ctx->protocol != IPPROTO_TCP))
		return 0;
	__u64 ns = bpf_get_netns_cookie(ctx);
	struct enrolled_pod *pod = bpf_map_lookup_elem(&enrolled, &ns);
	if (!pod)
		return 0;
	__u64 cookie = bpf_get_socket_cookie(ctx);
	if (bpf_map_lookup_elem(&agent_socks, &cookie)) {
		bpf_map_delete_elem(&agent_socks, &cookie);
		count(STAT_CONNECT_SKIPPED_AGENT);
		return 0;
	}
	return pod;
}

static __always_inline void remember(struct bpf_sock_addr *ctx, struct orig_dst *od)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	bpf_map_update_elem(&orig_by_cookie, &cookie, od, BPF_ANY);
}

static __always_inline int same4(__u32 ip_be, const __u8 own[4])
{
	__u32 o;
	__builtin_memcpy(&o, own, 4);
	return ip_be == o;
}

/* kernel_path says whether the agent has allowed this same-node connect and is alive. */
static __always_inline int kernel_path(__u64 ns, __u32 dst_be, __u16 port_be)
{
	__u32 zero = 0;
	__u64 *hb = bpf_map_lookup_elem(&heartbeat, &zero);
	if (!hb || *hb == 0 || bpf_ktime_get_ns() - *hb > HEARTBEAT_TTL_NS)
		return 0;
	struct verdict_key k = {};
	k.netns = ns;
	k.dst[10] = 0xff;
	k.dst[11] = 0xff;
	__builtin_memcpy(&k.dst[12], &dst_be, 4);
	k.port = port_be;
	return bpf_map_lookup_elem(&local_verdicts, &k) != 0;
}

/* probe_source4 gives a TCP connect the node makes itself (kubelet's probes, but any process of
 * the node's netns) to an enrolled pod's probe port the probe source address, which the pod's
 * sk_lookup exempts from STRICT. A socket its program bound to an address already keeps it:
 * forwarded or SNATed traffic, or a process bound to the node's IP, is not a probe of the
 * node's and gets no exemption. */
static __always_inline void probe_source4(struct bpf_sock_addr *ctx)
{
	if (ctx->type != 1 /* SOCK_STREAM */ || (ctx->protocol != 0 && ctx->protocol != IPPROTO_TCP))
		return;
	__u32 zero = 0;
	__u64 *node = bpf_map_lookup_elem(&node_netns, &zero);
	if (!node || *node == 0 || *node != bpf_get_netns_cookie(ctx))
		return;
	struct probe_dst k = {};
	__u32 dst = ctx->user_ip4;
	k.pod[10] = 0xff;
	k.pod[11] = 0xff;
	__builtin_memcpy(&k.pod[12], &dst, 4);
	k.port = bpf_ntohs((__u16)ctx->user_port);
	if (!bpf_map_lookup_elem(&probe_dsts, &k))
		return;
	/* Bound to an address already (even without a port yet, IP_BIND_ADDRESS_NO_PORT): keep it. */
	struct bpf_sock *sk = ctx->sk;
	if (!sk || sk->src_ip4 != 0)
		return;
	struct sockaddr_in sa = {};
	sa.sin_family = AF_INET;
	sa.sin_addr.s_addr = bpf_htonl(AMESH_PROBE_SOURCE4);
	if (bpf_bind(ctx, (struct sockaddr *)&sa, sizeof(sa)) == 0)
		count(STAT_CONNECT_PROBE_SOURCE);
}

SEC("cgroup/connect4")
int amesh_connect4(struct bpf_sock_addr *ctx)
{
	probe_source4(ctx);
	struct enrolled_pod *pod = enrolled_tcp(ctx);
	if (!pod)
		return 1;
	__u32 dst = ctx->user_ip4;
	if (dst == 0 || is_loopback4(dst) || (pod->has_ip4 && same4(dst, pod->ip4))) {
		count(STAT_CONNECT_SKIPPED_LOCAL);
		return 1;
	}
	struct orig_dst od = {};
	od.ip[10] = 0xff;
	od.ip[11] = 0xff;
	__builtin_memcpy(&od.ip[12], &dst, 4);
	od.port = (__u16)ctx->user_port;
	od.family = AF_INET;
	if (kernel_path(bpf_get_netns_cookie(ctx), dst, (__u16)ctx->user_port)) {
		/* Leave the destination alone; sockops lets the SYN past the peer's sk_lookup. */
		__u64 cookie = bpf_get_socket_cookie(ctx);
		struct pass_key pk = {};
		bpf_map_update_elem(&kernel_socks, &cookie, &pk, BPF_ANY);
		count(STAT_CONNECT_KERNEL_PATH);
		return 1;
	}
	remember(ctx, &od);
	ctx->user_ip4 = bpf_htonl(0x7f000001);
	ctx->user_port = bpf_htons(AMESH_OUTBOUND_PORT);
	count(STAT_CONNECT4_REDIRECTED);
	return 1;
}

SEC("cgroup/connect6")
int amesh_connect6(struct bpf_sock_addr *ctx)
{
	struct enrolled_pod *pod = enrolled_tcp(ctx);
	if (!pod)
		return 1;
	__u32 w0 = READ32(ctx->user_ip6[0]), w1 = READ32(ctx->user_ip6[1]), w2 = READ32(ctx->user_ip6[2]), w3 = READ32(ctx->user_ip6[3]);
	struct orig_dst od = {};
	__builtin_memcpy(&od.ip[0], &w0, 4);
	__builtin_memcpy(&od.ip[4], &w1, 4);
	__builtin_memcpy(&od.ip[8], &w2, 4);
	__builtin_memcpy(&od.ip[12], &w3, 4);
	od.port = (__u16)ctx->user_port;

	/* A dual-stack socket connecting to ::ffff:a.b.c.d runs only this program: treat it as
	 * IPv4, or it would bypass the mesh. */
	if (w0 == 0 && w1 == 0 && w2 == bpf_htonl(0xffff)) {
		if (w3 == 0 || is_loopback4(w3) || (pod->has_ip4 && same4(w3, pod->ip4))) {
			count(STAT_CONNECT_SKIPPED_LOCAL);
			return 1;
		}
		od.family = AF_INET;
		remember(ctx, &od);
		ctx->user_ip6[3] = bpf_htonl(0x7f000001);
		ctx->user_port = bpf_htons(AMESH_OUTBOUND_PORT);
		count(STAT_CONNECT6_REDIRECTED);
		return 1;
	}
	int unspec = (w0 | w1 | w2 | w3) == 0;
	int loop = w0 == 0 && w1 == 0 && w2 == 0 && w3 == bpf_htonl(1);
	int linklocal = (bpf_ntohl(w0) & 0xffc00000) == 0xfe800000;
	int own = 0;
	if (pod->has_ip6) {
		__u32 o[4];
		__builtin_memcpy(o, pod->ip6, 16);
		own = o[0] == w0 && o[1] == w1 && o[2] == w2 && o[3] == w3;
	}
	if (unspec || loop || linklocal || own) {
		count(STAT_CONNECT_SKIPPED_LOCAL);
		return 1;
	}
	od.family = AF_INET6;
	remember(ctx, &od);
	ctx->user_ip6[0] = 0;
	ctx->user_ip6[1] = 0;
	ctx->user_ip6[2] = 0;
	ctx->user_ip6[3] = bpf_htonl(1);
	ctx->user_port = bpf_htons(AMESH_OUTBOUND_PORT);
	count(STAT_CONNECT6_REDIRECTED);
	return 1;
}

/* The bytes the application moved, from the kernel's counters, which count sequence space: the
 * SYN (acked on every established connection) and each FIN take one byte of it. Which FINs went
 * shows in the state the socket closes from (args[0] of the CLOSE transition): from FIN_WAIT2,
 * CLOSING, LAST_ACK or TIME_WAIT ours was acked; from CLOSE_WAIT, CLOSING, LAST_ACK, TIME_WAIT
 * or FIN_WAIT2 the peer's came. (A FIN_WAIT2 that times out without the peer's FIN, an orphan
 * after tcp_fin_timeout, would count one byte too few received.) */
static __always_inline void app_bytes(struct bpf_sock_ops *ops, struct conn_event *ev)
{
	__u64 sent = ops->bytes_acked, recv = ops->bytes_received;
	__u32 from = ops->args[0];
	int fin_acked = from == BPF_TCP_FIN_WAIT2 || from == BPF_TCP_CLOSING || from == BPF_TCP_LAST_ACK ||
			from == BPF_TCP_TIME_WAIT;
	int fin_recvd = fin_acked || from == BPF_TCP_CLOSE_WAIT;
	if (sent > 0)
		sent--; /* the SYN */
	if (fin_acked && sent > 0)
		sent--;
	if (fin_recvd && recv > 0)
		recv--;
	ev->bytes_sent = sent;
	ev->bytes_received = recv;
}

static __always_inline void emit(struct bpf_sock_ops *ops, __u64 cookie, struct pass_key *pk, __u32 kind)
{
	struct conn_event ev = {};
	ev.cookie = cookie;
	ev.netns = bpf_get_netns_cookie(ops);
	ev.ts_ns = bpf_ktime_get_ns();
	if (kind == EVENT_CLOSE)
		app_bytes(ops, &ev);
	__builtin_memcpy(ev.src, pk->src, 16);
	__builtin_memcpy(ev.dst, pk->dst, 16);
	ev.sport = pk->sport;
	ev.dport = pk->dport;
	ev.kind = kind;
	if (bpf_ringbuf_output(&events, &ev, sizeof(ev), 0))
		count(STAT_EVENTS_DROPPED); /* the agent fell behind: an access line is lost, counted */
}

/* A short-circuited socket is about to send its SYN: let exactly its 4-tuple past the
 * destination pod's sk_lookup, and ask to hear when it closes. */
static __always_inline void kernel_connect(struct bpf_sock_ops *ops, __u64 cookie)
{
	struct pass_key *pk = bpf_map_lookup_elem(&kernel_socks, &cookie);
	if (!pk || ops->family != AF_INET)
		return;
	struct pass_key k = {};
	__u32 src = ops->local_ip4, dst = ops->remote_ip4;
	k.src[10] = k.src[11] = 0xff;
	k.dst[10] = k.dst[11] = 0xff;
	__builtin_memcpy(&k.src[12], &src, 4);
	__builtin_memcpy(&k.dst[12], &dst, 4);
	k.sport = (__u16)ops->local_port;
	k.dport = (__u16)bpf_ntohl(ops->remote_port);
	__u8 one = 1;
	bpf_map_update_elem(&passthrough, &k, &one, BPF_ANY);
	bpf_map_update_elem(&kernel_socks, &cookie, &k, BPF_ANY);
	bpf_sock_ops_cb_flags_set(ops, BPF_SOCK_OPS_STATE_CB_FLAG);
}

static __always_inline void kernel_event(struct bpf_sock_ops *ops, __u64 cookie, __u32 kind)
{
	struct pass_key *pk = bpf_map_lookup_elem(&kernel_socks, &cookie);
	if (!pk)
		return;
	struct pass_key k = *pk;
	bpf_map_delete_elem(&passthrough, &k); /* established or gone: no SYN to let past any more */
	emit(ops, cookie, &k, kind);
	if (kind == EVENT_CLOSE)
		bpf_map_delete_elem(&kernel_socks, &cookie);
}

SEC("sockops")
int amesh_sockops(struct bpf_sock_ops *ops)
{
	__u64 cookie = bpf_get_socket_cookie(ops);
	switch (ops->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		kernel_connect(ops, cookie);
		return 1;
	case BPF_SOCK_OPS_STATE_CB:
		if (ops->args[1] == BPF_TCP_CLOSE) {
			kernel_event(ops, cookie, EVENT_CLOSE);
			/* A captured socket is gone: its original destination is no longer needed. */
			bpf_map_delete_elem(&orig_by_cookie, &cookie);
		}
		return 1;
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		kernel_event(ops, cookie, EVENT_OPEN);
		break;
	default:
		return 1;
	}
	struct orig_dst *od = bpf_map_lookup_elem(&orig_by_cookie, &cookie);
	if (!od)
		return 1;
	struct tuple_key k = {};
	k.netns = bpf_get_netns_cookie(ops);
	if (ops->family == AF_INET) {
		__u32 ip = ops->local_ip4;
		k.ip[10] = 0xff;
		k.ip[11] = 0xff;
		__builtin_memcpy(&k.ip[12], &ip, 4);
	} else {
		__u32 w0 = READ32(ops->local_ip6[0]), w1 = READ32(ops->local_ip6[1]), w2 = READ32(ops->local_ip6[2]), w3 = READ32(ops->local_ip6[3]);
		__builtin_memcpy(&k.ip[0], &w0, 4);
		__builtin_memcpy(&k.ip[4], &w1, 4);
		__builtin_memcpy(&k.ip[8], &w2, 4);
		__builtin_memcpy(&k.ip[12], &w3, 4);
	}
	k.port = (__u16)ops->local_port; /* host byte order in sock_ops */
	struct orig_dst val = *od;
	bpf_map_update_elem(&orig_by_tuple, &k, &val, BPF_ANY);
	/* orig_by_cookie stays for getpeername until the socket closes (STATE_CB below). */
	bpf_sock_ops_cb_flags_set(ops, BPF_SOCK_OPS_STATE_CB_FLAG);
	count(STAT_SOCKOPS_REKEYED);
	return 1;
}

SEC("sk_lookup")
int amesh_sk_lookup(struct bpf_sk_lookup *ctx)
{
	if (ctx->protocol != IPPROTO_TCP)
		return SK_PASS;
	/* Traffic on lo is the pod talking to itself or the agent's own connection to the app
	 * (made from the client's IP, IP_TRANSPARENT): never steal it. */
	if (ctx->ingress_ifindex == LOOPBACK_IFINDEX) {
		count(STAT_LOOKUP_PASSED_LOCAL);
		return SK_PASS;
	}
	struct listener_key key = {};
	struct pass_key pk = {};
	if (ctx->family == AF_INET) {
		if (is_loopback4(ctx->local_ip4) || is_loopback4(ctx->remote_ip4)) {
			count(STAT_LOOKUP_PASSED_LOCAL);
			return SK_PASS;
		}
		/* From the pod's own address: the pod talking to itself (a packet from outside with
		 * a local source address is dropped as martian before it gets here). */
		if (ctx->local_ip4 == ctx->remote_ip4) {
			count(STAT_LOOKUP_PASSED_LOCAL);
			return SK_PASS;
		}
		__u32 ip = ctx->local_ip4, rip = ctx->remote_ip4;
		key.ip[10] = 0xff;
		key.ip[11] = 0xff;
		__builtin_memcpy(&key.ip[12], &ip, 4);
		__builtin_memcpy(pk.dst, key.ip, 16);
		pk.src[10] = 0xff;
		pk.src[11] = 0xff;
		__builtin_memcpy(&pk.src[12], &rip, 4);
	} else {
		__u32 w0 = READ32(ctx->local_ip6[0]), w1 = READ32(ctx->local_ip6[1]), w2 = READ32(ctx->local_ip6[2]), w3 = READ32(ctx->local_ip6[3]);
		__u32 r0 = READ32(ctx->remote_ip6[0]), r1 = READ32(ctx->remote_ip6[1]), r2 = READ32(ctx->remote_ip6[2]), r3 = READ32(ctx->remote_ip6[3]);
		if (w0 == r0 && w1 == r1 && w2 == r2 && w3 == r3) {
			count(STAT_LOOKUP_PASSED_LOCAL);
			return SK_PASS;
		}
		__builtin_memcpy(&key.ip[0], &w0, 4);
		__builtin_memcpy(&key.ip[4], &w1, 4);
		__builtin_memcpy(&key.ip[8], &w2, 4);
		__builtin_memcpy(&key.ip[12], &w3, 4);
		__builtin_memcpy(pk.dst, key.ip, 16);
		__builtin_memcpy(&pk.src[0], &r0, 4);
		__builtin_memcpy(&pk.src[4], &r1, 4);
		__builtin_memcpy(&pk.src[8], &r2, 4);
		__builtin_memcpy(&pk.src[12], &r3, 4);
	}
	/* The agent's own connection to the app, from the client's IP: let exactly it through. */
	pk.sport = bpf_ntohs(ctx->remote_port);
	pk.dport = (__u16)ctx->local_port;
	if (bpf_map_lookup_elem(&passthrough, &pk)) {
		count(STAT_LOOKUP_PASSTHROUGH);
		return SK_PASS;
	}
	/* A kubelet probe: from one of the node's addresses to one of the pod's probe ports. */
	struct probe_key prk = {};
	__builtin_memcpy(prk.pod, pk.dst, 16);
	__builtin_memcpy(prk.node, pk.src, 16);
	prk.port = pk.dport;
	if (bpf_map_lookup_elem(&probe_exempt, &prk)) {
		count(STAT_LOOKUP_PROBE);
		return SK_PASS;
	}
	key.kind = ctx->local_port == AMESH_HBONE_PORT ? LISTENER_HBONE : LISTENER_PLAINTEXT;
	struct bpf_sock *sk = bpf_map_lookup_elem(&listeners, &key);
	if (!sk) {
		/* Enrolled pod, no agent listener (the agent is down): drop, never fail open. */
		count(STAT_LOOKUP_DROPPED_NO_LISTENER);
		return SK_DROP;
	}
	long err = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	if (err) {
		count(STAT_LOOKUP_DROPPED_ASSIGN);
		return SK_DROP;
	}
	count(STAT_LOOKUP_ASSIGNED);
	return SK_PASS;
}

/* getpeername on a captured socket answers the original destination, so the capture is
 * invisible to the app (it asked for B:80, it sees B:80, not 127.0.0.1:15001). */
SEC("cgroup/getpeername4")
int amesh_getpeername4(struct bpf_sock_addr *ctx)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct orig_dst *od = bpf_map_lookup_elem(&orig_by_cookie, &cookie);
	if (!od || od->family != AF_INET)
		return 1;
	__u32 ip;
	__builtin_memcpy(&ip, &od->ip[12], 4);
	ctx->user_ip4 = ip;
	ctx->user_port = od->port;
	count(STAT_GETPEERNAME_RESTORED);
	return 1;
}

SEC("cgroup/getpeername6")
int amesh_getpeername6(struct bpf_sock_addr *ctx)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct orig_dst *od = bpf_map_lookup_elem(&orig_by_cookie, &cookie);
	if (!od)
		return 1;
	__u32 w[4];
	__builtin_memcpy(w, od->ip, 16);
	ctx->user_ip6[0] = w[0];
	ctx->user_ip6[1] = w[1];
	ctx->user_ip6[2] = w[2];
	ctx->user_ip6[3] = w[3];
	ctx->user_port = od->port;
	count(STAT_GETPEERNAME_RESTORED);
	return 1;
}
