package redirect

//go:generate go tool bpf2go -target bpfel -tags linux -cflags "-O2 -g -Wall -Werror" -type enrolled_pod -type orig_dst -type tuple_key -type listener_key -type pass_key -type verdict_key -type probe_key -type probe_dst -type conn_event amesh ../bpf/amesh.c -- -I/usr/include/x86_64-linux-gnu -I../bpf
