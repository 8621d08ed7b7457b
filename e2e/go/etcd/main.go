// Command etcd is etcd's own server entry point, built from the published Go module
// (etcd's root module cannot be `go build`-ed from the proxy: its go.mod replaces
// siblings with local paths).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
