#!/bin/sh
# Regenerates cni.pb.go and cni_grpc.pb.go from cni.proto with the protoc plugins pinned in go.mod's
# tool block. Run by `go generate` (see gen.go), from this directory; OUT overrides the output
# directory (the freshness test uses it).
set -eu
out=${OUT:-.}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go build -o "$tmp/protoc-gen-go" google.golang.org/protobuf/cmd/protoc-gen-go
go build -o "$tmp/protoc-gen-go-grpc" google.golang.org/grpc/cmd/protoc-gen-go-grpc
protoc -I . \
  --plugin=protoc-gen-go="$tmp/protoc-gen-go" --go_out="$out" --go_opt=paths=source_relative \
  --plugin=protoc-gen-go-grpc="$tmp/protoc-gen-go-grpc" --go-grpc_out="$out" --go-grpc_opt=paths=source_relative \
  cni.proto
