// Command helmroute (helm 4): for each argv on stdin, what helm 4.3.2's own command tree
// does with it (see package route).
package main

import (
	"io"

	"github.com/spf13/cobra"
	helmcmd "helm.sh/helm/v4/pkg/cmd"

	"guarded-upgrade.test/helmroute/route"
)

func main() {
	newRoot := func(args []string) (*cobra.Command, error) {
		return helmcmd.NewRootCmd(io.Discard, args, func(bool) {})
	}
	// helm keeps --color in its package-wide settings, and a root built with a bad one
	// fails; one built with a good one puts it back.
	route.Serve(newRoot, func() { _, _ = newRoot([]string{"--color", "auto"}) })
}
