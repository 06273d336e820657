// csi-node-driver-registrar (stand-in, see go.mod): registers a CSI driver with the kubelet
// through the plugin registration socket <plugin-registration-path>/<driver>-reg.sock, like
// kubernetes-csi/node-driver-registrar, and serves /healthz on --http-endpoint.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sync/atomic"
	"syscall"

	"google.golang.org/grpc"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"

	"dew-csi.local/hack/csi-sidecars/internal/csiconn"
)

type server struct {
	registerapi.UnimplementedRegistrationServer
	driver, endpoint string
	registered       atomic.Bool
}

func (s *server) GetInfo(context.Context, *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	log.Printf("Received GetInfo call")
	return &registerapi.PluginInfo{
		Type:              registerapi.CSIPlugin,
		Name:              s.driver,
		Endpoint:          s.endpoint,
		SupportedVersions: []string{"1.0.0"},
	}, nil
}

func (s *server) NotifyRegistrationStatus(_ context.Context, st *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	log.Printf("Received NotifyRegistrationStatus call: %+v", st)
	if !st.PluginRegistered {
		// As upstream: a refused registration ends the process, so the container restarts.
		log.Printf("Registration process failed with error: %s, restarting registration container.", st.Error)
		os.Exit(1)
	}
	s.registered.Store(true)
	return &registerapi.RegistrationStatusResponse{}, nil
}

func main() {
	csiAddress := flag.String("csi-address", "/run/csi/socket", "CSI driver socket in this container")
	regPath := flag.String("kubelet-registration-path", "", "the same socket's path on the host, as the kubelet dials it")
	pluginDir := flag.String("plugin-registration-path", "/registration", "kubelet's plugins_registry directory in this container")
	httpEndpoint := flag.String("http-endpoint", "", "address for /healthz (empty: none)")
	flag.Int("v", 0, "log level (accepted for compatibility)")
	flag.Parse()
	if *regPath == "" {
		log.Fatal("--kubelet-registration-path is required")
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	conn, err := csiconn.Dial(*csiAddress)
	if err != nil {
		log.Fatalf("dial %s: %v", *csiAddress, err)
	}
	driver, err := csiconn.DriverName(ctx, conn)
	if err != nil {
		log.Fatalf("driver name: %v", err)
	}
	conn.Close()
	log.Printf("CSI driver name: %q", driver)

	sock := filepath.Join(*pluginDir, driver+"-reg.sock")
	if err := os.Remove(sock); err != nil && !os.IsNotExist(err) {
		log.Fatalf("remove stale %s: %v", sock, err)
	}
	lis, err := net.Listen("unix", sock)
	if err != nil {
		log.Fatalf("listen %s: %v", sock, err)
	}
	srv := &server{driver: driver, endpoint: *regPath}
	g := grpc.NewServer()
	registerapi.RegisterRegistrationServer(g, srv)

	if *httpEndpoint != "" {
		mux := http.NewServeMux()
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
			// Unhealthy when the registration socket is gone (kubelet would not find us again).
			if _, err := os.Stat(sock); err != nil {
				http.Error(w, fmt.Sprintf("registration socket: %v", err), http.StatusInternalServerError)
				return
			}
			if !srv.registered.Load() {
				http.Error(w, "not registered with the kubelet yet", http.StatusInternalServerError)
				return
			}
			fmt.Fprintln(w, "ok")
		})
		go func() { log.Fatal(http.ListenAndServe(*httpEndpoint, mux)) }()
	}
	go func() {
		<-ctx.Done()
		g.GracefulStop()
		os.Remove(sock)
	}()
	log.Printf("Registration server started at: %s", sock)
	if err := g.Serve(lis); err != nil {
		log.Fatalf("serve: %v", err)
	}
}
