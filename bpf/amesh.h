/* Shared definitions of amesh's eBPF programs; the Go side gets these structs from bpf2go -type. */
#ifndef AMESH_H
#define AMESH_H

#include <linux/types.h>

/* The agent marks its own sockets (SO_MARK), for routing: its listeners' accepted connections
 * reply by the main table, and its connections to apps from a client's IP carry the
 * transparent mark, which the app's replies inherit. The capture does NOT trust marks (any pod
 * with CAP_NET_RAW can set one): it skips a socket only when the agent registered its cookie in
 * agent_socks, which no pod can write. */
#define AMESH_MARK 0x539
#define AMESH_TRANSPARENT_MARK 0x53a

/* The node's own connections to an enrolled pod's probe ports leave from this link-local
 * address (the one Istio ambient SNATs kubelet probes to), 169.254.7.127 in host byte order,
 * and only it is exempt from STRICT: not every address of the node. IPv4 only for now. */
#define AMESH_PROBE_SOURCE4 0xa9fe077f

#define AMESH_OUTBOUND_PORT 15001
#define AMESH_INBOUND_PORT 15006
#define AMESH_HBONE_PORT 15008

/* An enrolled network namespace, keyed by its netns cookie: the pod's own addresses, which are
 * never redirected (a pod talking to itself). */
struct enrolled_pod {
	__u8 ip4[4];
	__u8 ip6[16];
	__u32 has_ip4;
	__u32 has_ip6;
};

/* An original destination: an IPv4 address is stored v4-mapped (::ffff:a.b.c.d). Port in network
 * byte order, as the socket had it. */
struct orig_dst {
	__u8 ip[16];
	__u16 port;
	__u16 family;
	__u32 _pad;
};

/* How the agent finds a redirected connection's original destination: the netns of the client
 * (every pod's redirected client is 127.0.0.1:<port>, so the cookie is what tells them apart),
 * the client's address as the agent sees it (v4-mapped) and port (host byte order). */
struct tuple_key {
	__u64 netns;
	__u8 ip[16];
	__u16 port;
	__u16 _pad;
	__u32 _pad2;
};

/* Which of a pod's agent listeners an inbound TCP connection goes to: keyed by the pod IP it is
 * addressed to (v4-mapped) and the listener kind. */
struct listener_key {
	__u8 ip[16];
	__u32 kind;
};

/* A connection the agent itself makes to an app inside the pod, from the client's IP
 * (IP_TRANSPARENT): sk_lookup lets exactly these through to the app. Ports host byte order. */
struct pass_key {
	__u8 src[16];
	__u8 dst[16];
	__u16 sport;
	__u16 dport;
	__u32 _pad;
};

/* A cached "allowed" decision of the agent for a same-node connection: from the netns cookie of
 * the source pod to a destination pod address (v4-mapped) and port (network byte order, as
 * connect() has it). With a fresh agent heartbeat, such a connect() goes straight to the
 * destination pod: the kernel short-circuit (no agent in the data path). */
struct verdict_key {
	__u64 netns;
	__u8 dst[16];
	__u16 port;
	__u16 _pad;
	__u32 _pad2;
};

/* A kubelet probe exemption: plaintext from one of the node's own addresses to a probe port of
 * an enrolled pod reaches the app directly, even under STRICT (as Istio ambient lets kubelet
 * probes through). Addresses v4-mapped, port host byte order. */
/* A pod's probe port: connects to it from the node's netns get the probe source address. */
struct probe_dst {
	__u8 pod[16];
	__u16 port; /* host byte order */
	__u16 _pad;
	__u32 _pad2;
};

struct probe_key {
	__u8 pod[16];
	__u8 node[16];
	__u16 port;
	__u16 _pad;
	__u32 _pad2;
};

/* What the agent learns of a short-circuited connection, by ring buffer, for its access log. */
struct conn_event {
	__u64 cookie;
	__u64 netns;
	__u64 ts_ns;
	__u64 bytes_sent;
	__u64 bytes_received;
	__u8 src[16];
	__u8 dst[16];
	__u16 sport;
	__u16 dport;
	__u32 kind; /* EVENT_OPEN, EVENT_CLOSE */
};

enum conn_event_kind {
	EVENT_OPEN = 1,
	EVENT_CLOSE = 2,
};

/* The kernel path is used only while the agent's heartbeat is younger than this. */
#define HEARTBEAT_TTL_NS (1000ULL * 1000 * 1000)

enum listener_kind {
	LISTENER_HBONE = 0,     /* :15008 */
	LISTENER_PLAINTEXT = 1, /* :15006 */
};

/* Counters (per CPU), indices into the stats map. */
enum stat {
	STAT_CONNECT4_REDIRECTED = 0,
	STAT_CONNECT6_REDIRECTED,
	STAT_CONNECT_SKIPPED_AGENT,
	STAT_CONNECT_SKIPPED_LOCAL,
	STAT_SOCKOPS_REKEYED,
	STAT_LOOKUP_ASSIGNED,
	STAT_LOOKUP_DROPPED_NO_LISTENER,
	STAT_LOOKUP_DROPPED_ASSIGN,
	STAT_LOOKUP_PASSTHROUGH,
	STAT_GETPEERNAME_RESTORED,
	STAT_LOOKUP_PASSED_LOCAL,
	STAT_CONNECT_KERNEL_PATH,
	STAT_EVENTS_DROPPED,
	STAT_LOOKUP_PROBE,
	STAT_CONNECT_PROBE_SOURCE,
	STAT_MAX,
};

#endif
