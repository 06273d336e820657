// Package csiconn dials a CSI driver's unix socket, as both sidecars do.
package csiconn

import (
	"context"
	"fmt"
	"strings"
	"time"

	csi "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Dial returns a client connection to addr (a path or unix:// URL); gRPC connects lazily.
func Dial(addr string) (*grpc.ClientConn, error) {
	if !strings.HasPrefix(addr, "unix://") {
		addr = "unix://" + addr
	}
	return grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
}

// DriverName asks the driver for its name, retrying until ctx ends (the driver may start later).
func DriverName(ctx context.Context, conn *grpc.ClientConn) (string, error) {
	id := csi.NewIdentityClient(conn)
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		resp, err := id.GetPluginInfo(cctx, &csi.GetPluginInfoRequest{})
		cancel()
		if err == nil {
			if resp.GetName() == "" {
				return "", fmt.Errorf("driver answered GetPluginInfo with an empty name")
			}
			return resp.GetName(), nil
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("GetPluginInfo: %w", err)
		case <-time.After(time.Second):
		}
	}
}
