package cniv1

// Regenerate cni.pb.go and cni_grpc.pb.go after changing cni.proto; generate_test.go fails when
// the committed files are stale.
//go:generate sh gen.sh
