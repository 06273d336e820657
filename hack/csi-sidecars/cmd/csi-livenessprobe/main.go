// csi-livenessprobe (stand-in, see go.mod): serves /healthz on --health-port and answers 200 only
// when the CSI driver answers Identity.Probe (ready, or readiness not reported) within
// --probe-timeout, like kubernetes-csi/livenessprobe.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net/http"
	"time"

	csi "github.com/container-storage-interface/spec/lib/go/csi"

	"dew-csi.local/hack/csi-sidecars/internal/csiconn"
)

func main() {
	csiAddress := flag.String("csi-address", "/run/csi/socket", "CSI driver socket in this container")
	port := flag.Int("health-port", 9808, "TCP port for /healthz")
	timeout := flag.Duration("probe-timeout", time.Second, "timeout of each Probe call")
	flag.Int("v", 0, "log level (accepted for compatibility)")
	flag.Parse()

	conn, err := csiconn.Dial(*csiAddress)
	if err != nil {
		log.Fatalf("dial %s: %v", *csiAddress, err)
	}
	id := csi.NewIdentityClient(conn)
	http.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), *timeout)
		defer cancel()
		resp, err := id.Probe(ctx, &csi.ProbeRequest{})
		if err != nil {
			log.Printf("health check failed: %v", err)
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		if ready := resp.GetReady(); ready != nil && !ready.GetValue() {
			http.Error(w, "driver responded but is not ready", http.StatusInternalServerError)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	addr := fmt.Sprintf(":%d", *port)
	log.Printf("ServeMux listening at %q", addr)
	log.Fatal(http.ListenAndServe(addr, nil))
}
