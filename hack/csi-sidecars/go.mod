// Test infrastructure (not product): stand-ins for the kubernetes-csi node-driver-registrar and
// livenessprobe sidecars, which the Go module proxy refuses here (403 for
// github.com/kubernetes-csi/node-driver-registrar and .../livenessprobe). They speak the same
// APIs: kubelet's plugin registration (k8s.io/kubelet pluginregistration/v1) and CSI (Identity
// GetPluginInfo and Probe), and take the flags deploy/ passes to the real ones.
module dew-csi.local/hack/csi-sidecars

go 1.26.0

require (
	github.com/container-storage-interface/spec v1.12.1-0.20260720052920-cd9e7ad1ae09
	google.golang.org/grpc v1.82.1
	k8s.io/kubelet v0.37.2
)

require (
	golang.org/x/net v0.57.0 // indirect
	golang.org/x/sys v0.47.0 // indirect
	golang.org/x/text v0.40.0 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20260526163538-3dc84a4a5aaa // indirect
	google.golang.org/protobuf v1.36.12-0.20260120151049-f2248ac996af // indirect
)
