// containerd's snapshotter conformance suite against a running p2pblobsd.
//
// This starts nothing: tests/integration/test_snapshotter.py starts the daemon with
// --snapshotter-socket and runs, as root (the suite mounts),
//
//	P2PBLOBS_SNAPSHOTTER_SOCKET=/path/to.sock GOPATH=<tmp>:/usr/share/gocode GO111MODULE=off \
//	    go test -v -parallel 1 ./tests/snapshotter
//
// Offline: every import comes from Debian's golang-github-containerd-containerd-dev tree.
// The suite's tests share one daemon, so they run one at a time (-parallel 1) and each
// test's cleanup removes every snapshot it left, children first, then asks the daemon to
// Cleanup its directories: the next test starts from an empty snapshotter, as the suite
// assumes (it would give each test a fresh in-process snapshotter).
package snapshotter

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/containerd/snapshots/proxy"
	"github.com/containerd/containerd/snapshots/testsuite"
	"google.golang.org/grpc"
)

func dial(t *testing.T, sock string) *grpc.ClientConn {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := grpc.DialContext(ctx, "p2pblobs", grpc.WithInsecure(), grpc.WithBlock(),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}))
	if err != nil {
		t.Fatalf("dial %s: %v", sock, err)
	}
	return conn
}

// removeAll removes every snapshot, leaves first (a snapshot with children cannot go).
func removeAll(ctx context.Context, sn snapshots.Snapshotter) error {
	for round := 0; ; round++ {
		var keys []string
		parents := map[string]bool{}
		if err := sn.Walk(ctx, func(ctx context.Context, si snapshots.Info) error {
			keys = append(keys, si.Name)
			if si.Parent != "" {
				parents[si.Parent] = true
			}
			return nil
		}); err != nil {
			return err
		}
		if len(keys) == 0 {
			return nil
		}
		if round > 1000 {
			return fmt.Errorf("snapshots left after %d rounds: %v", round, keys)
		}
		for _, k := range keys {
			if !parents[k] {
				if err := sn.Remove(ctx, k); err != nil {
					return fmt.Errorf("remove %s: %w", k, err)
				}
			}
		}
	}
}

func TestSnapshotterConformance(t *testing.T) {
	sock := os.Getenv("P2PBLOBS_SNAPSHOTTER_SOCKET")
	if sock == "" {
		t.Skip("P2PBLOBS_SNAPSHOTTER_SOCKET not set (run through tests/integration/test_snapshotter.py)")
	}
	conn := dial(t, sock)
	t.Cleanup(func() { conn.Close() }) // after the parallel subtests, not before
	testsuite.SnapshotterSuite(t, "P2PBlobs", func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		sn := proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "p2pblobs")
		cleanup := func() error {
			if err := removeAll(ctx, sn); err != nil {
				return err
			}
			return sn.(snapshots.Cleaner).Cleanup(ctx)
		}
		return sn, cleanup, nil
	})
}

// TestSnapshotterPersist checks that metadata survives a daemon restart. The pytest runs it
// with P2PBLOBS_SNAPSHOTTER_PERSIST=write, restarts the daemon, then runs it with =check.
func TestSnapshotterPersist(t *testing.T) {
	sock, phase := os.Getenv("P2PBLOBS_SNAPSHOTTER_SOCKET"), os.Getenv("P2PBLOBS_SNAPSHOTTER_PERSIST")
	if sock == "" || phase == "" {
		t.Skip("P2PBLOBS_SNAPSHOTTER_SOCKET or P2PBLOBS_SNAPSHOTTER_PERSIST not set")
	}
	conn := dial(t, sock)
	defer conn.Close()
	ctx := namespaces.WithNamespace(context.Background(), "persist")
	sn := proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "p2pblobs")
	labels := snapshots.WithLabels(map[string]string{"p2pblobs.test/persist": "yes"})
	switch phase {
	case "write":
		if _, err := sn.Prepare(ctx, "persist-base-tmp", "", labels); err != nil {
			t.Fatal(err)
		}
		if err := sn.Commit(ctx, "persist-base", "persist-base-tmp", labels); err != nil {
			t.Fatal(err)
		}
		if _, err := sn.Prepare(ctx, "persist-child", "persist-base", labels); err != nil {
			t.Fatal(err)
		}
	case "check":
		base, err := sn.Stat(ctx, "persist-base")
		if err != nil {
			t.Fatal(err)
		}
		if base.Kind != snapshots.KindCommitted || base.Labels["p2pblobs.test/persist"] != "yes" {
			t.Fatalf("persist-base after restart: %+v", base)
		}
		child, err := sn.Stat(ctx, "persist-child")
		if err != nil {
			t.Fatal(err)
		}
		if child.Kind != snapshots.KindActive || child.Parent != "persist-base" {
			t.Fatalf("persist-child after restart: %+v", child)
		}
		if _, err := sn.Stat(ctx, "persist-base-tmp"); !errdefs.IsNotFound(err) {
			t.Fatalf("persist-base-tmp after restart: want not found, got %v", err)
		}
		mounts, err := sn.Mounts(ctx, "persist-child")
		if err != nil {
			t.Fatal(err)
		}
		if len(mounts) != 1 || mounts[0].Type != "overlay" ||
			!strings.Contains(strings.Join(mounts[0].Options, ","), "lowerdir=") {
			t.Fatalf("persist-child mounts after restart: %+v", mounts)
		}
		if err := removeAll(ctx, sn); err != nil {
			t.Fatal(err)
		}
	default:
		t.Fatalf("unknown P2PBLOBS_SNAPSHOTTER_PERSIST=%q", phase)
	}
}
