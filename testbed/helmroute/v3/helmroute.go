//go:build helmroute

// Command helmroute (helm 3): for each argv on stdin, what helm 3.21.4's own command tree
// does with it (see package route). Helm 3 builds its tree in package main
// (helm.sh/helm/v3/cmd/helm), so scripts/install-helmroute.sh compiles this file into
// that package (go build -overlay), with helm's own main renamed.
package main

import (
	"io"

	"github.com/spf13/cobra"
	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/cli"

	"guarded-upgrade.test/helmroute/route"
)

func main() {
	newRoot := func(args []string) (*cobra.Command, error) {
		return newRootCmd(new(action.Configuration), io.Discard, args)
	}
	route.Serve(newRoot, func() { settings = cli.New() })
}
