// estargzbuild IN.tar OUT: converts a tar into eStargz with the upstream library; prints
// the TOC digest and the diff_id (a test helper of p2pblobs' test_layers.py).
package main

import (
	"fmt"
	"io"
	"os"

	"github.com/containerd/stargz-snapshotter/estargz"
)

func main() {
	in, err := os.Open(os.Args[1])
	if err != nil {
		panic(err)
	}
	st, _ := in.Stat()
	blob, err := estargz.Build(io.NewSectionReader(in, 0, st.Size()), estargz.WithChunkSize(1<<20))
	if err != nil {
		panic(err)
	}
	out, err := os.Create(os.Args[2])
	if err != nil {
		panic(err)
	}
	if _, err := io.Copy(out, blob); err != nil {
		panic(err)
	}
	blob.Close()
	out.Close()
	fmt.Printf("%s %s\n", blob.TOCDigest(), blob.DiffID())
}
