// stargz-grpc: stargz-snapshotter as a containerd proxy snapshotter, the baseline of the
// container-start bench (bench/bench_lazy.py, issue 17).
//
// Debian 12 packages the stargz-snapshotter Go library (golang-github-containerd-stargz-
// snapshotter-dev) but not its daemon, containerd-stargz-grpc; this is the part of that
// daemon the bench needs, written against the library: stargz's FUSE filesystem (fs) under
// its snapshotter (snapshot), served on a unix socket with containerd's own snapshot gRPC
// service (contrib/snapshotservice), so containerd reaches it as
//
//	[proxy_plugins.stargz]
//	  type = "snapshot"
//	  address = "<socket>"
//
// Layers come from the registry named in the labels `ctr-remote image rpull` puts on each
// Prepare (containerd.io/snapshot/remote/stargz.*; source.FromDefaultLabels). The bench's
// registry is plain HTTP on a loopback or bridge address: -insecure HOST:PORT (repeatable)
// makes those hosts http; localhost and 127.0.0.1 are http anyway. No credentials, no mirrors.
//
// The filesystem is stargz's default configuration (prefetch of the landmark section, then the
// background fetch of the rest of each layer), as containerd-stargz-grpc runs it with an empty
// config.toml; -no-background-fetch turns the background fetch off.
//
// Build offline (no module download; everything comes from /usr/share/gocode):
//
//	GOPATH=<tmp>:/usr/share/gocode GO111MODULE=off go build -o stargz-grpc ./bench/stargz
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/contrib/snapshotservice"
	"github.com/containerd/containerd/log"
	"github.com/containerd/containerd/reference"
	"github.com/containerd/containerd/remotes/docker"
	"github.com/containerd/containerd/snapshots/overlay/overlayutils"
	stargzfs "github.com/containerd/stargz-snapshotter/fs"
	fsconfig "github.com/containerd/stargz-snapshotter/fs/config"
	"github.com/containerd/stargz-snapshotter/fs/layer"
	"github.com/containerd/stargz-snapshotter/fs/source"
	sbase "github.com/containerd/stargz-snapshotter/snapshot"
	rhttp "github.com/hashicorp/go-retryablehttp"
	"github.com/sirupsen/logrus"
	"google.golang.org/grpc"
)

type hostList []string

func (h *hostList) String() string     { return strings.Join(*h, ",") }
func (h *hostList) Set(v string) error { *h = append(*h, v); return nil }

// registryHosts answers, for an image reference, the one registry that serves it: the
// reference's own host, over http when it is local or named by -insecure, without
// credentials (the bench's registry has none). stargz's service/resolver does more (mirrors,
// keychains) but pulls in the CRI API, which Debian does not package for Go.
func registryHosts(insecure []string) source.RegistryHosts {
	plain := map[string]bool{}
	for _, h := range insecure {
		plain[h] = true
	}
	return func(ref reference.Spec) ([]docker.RegistryHost, error) {
		host := ref.Hostname()
		// stargz's fetcher wraps Client.Transport (nil panics) and tunes its retries
		// when it is go-retryablehttp's, as stargz's own resolver makes it.
		rc := rhttp.NewClient()
		rc.Logger = nil
		client := rc.StandardClient()
		client.Timeout = 300 * time.Second
		h := docker.RegistryHost{
			Client:       client,
			Host:         host,
			Scheme:       "https",
			Path:         "/v2",
			Capabilities: docker.HostCapabilityPull | docker.HostCapabilityResolve,
			Authorizer:   docker.NewDockerAuthorizer(docker.WithAuthClient(client)),
		}
		if local, _ := docker.MatchLocalhost(host); local || plain[host] {
			h.Scheme = "http"
		}
		return []docker.RegistryHost{h}, nil
	}
}

func run() error {
	var insecure hostList
	address := flag.String("address", "", "unix socket to serve the snapshot API on")
	root := flag.String("root", "", "state directory (snapshots, FUSE mounts, layer cache)")
	noBG := flag.Bool("no-background-fetch", false, "do not fetch the rest of each layer in the background")
	level := flag.String("log-level", "info", "logrus level")
	flag.Var(&insecure, "insecure", "registry HOST:PORT reached over plain HTTP (repeatable)")
	flag.Parse()
	if *address == "" || *root == "" {
		return fmt.Errorf("usage: stargz-grpc -address SOCK -root DIR [-insecure HOST:PORT]...")
	}
	lv, err := logrus.ParseLevel(*level)
	if err != nil {
		return err
	}
	logrus.SetLevel(lv)
	ctx := log.WithLogger(context.Background(), log.L)

	hosts := registryHosts(insecure)

	snRoot := filepath.Join(*root, "snapshotter")
	if err := os.MkdirAll(snRoot, 0o700); err != nil {
		return err
	}
	// As stargz's own service does: overlayfs in a user namespace wants user.* xattrs.
	opq := layer.OverlayOpaqueTrusted
	if u, err := overlayutils.NeedsUserXAttr(snRoot); err == nil && u {
		opq = layer.OverlayOpaqueUser
	}
	cfg := fsconfig.Config{NoBackgroundFetch: *noBG, NoPrometheus: true}
	fs, err := stargzfs.NewFilesystem(filepath.Join(*root, "stargz"), cfg,
		stargzfs.WithGetSources(source.FromDefaultLabels(hosts)),
		stargzfs.WithOverlayOpaqueType(opq))
	if err != nil {
		return fmt.Errorf("stargz filesystem: %w", err)
	}
	sn, err := sbase.NewSnapshotter(ctx, snRoot, fs, sbase.AsynchronousRemove)
	if err != nil {
		return fmt.Errorf("stargz snapshotter: %w", err)
	}

	if err := os.Remove(*address); err != nil && !os.IsNotExist(err) {
		return err
	}
	l, err := net.Listen("unix", *address)
	if err != nil {
		return err
	}
	srv := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(srv, snapshotservice.FromSnapshotter(sn))

	// SIGTERM/SIGINT: stop serving, then Close the snapshotter, which unmounts stargz's FUSE
	// layers (a leftover FUSE mount would outlive the bench's work dir).
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-sig
		srv.Stop()
	}()
	log.G(ctx).Infof("stargz-grpc serving on %s", *address)
	serr := srv.Serve(l)
	if cerr := sn.Close(); cerr != nil {
		log.G(ctx).WithError(cerr).Warn("closing the snapshotter")
	}
	return serr
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "stargz-grpc:", err)
		os.Exit(1)
	}
}
