// Package route answers, for one argv, what helm's own command tree does with it: which
// command cobra finds (Find, as helm's main runs it through Execute), and whether that
// command runs, shows its help, or fails on its flags or arguments. The guarded-upgrade
// shim must route `helm upgrade` exactly as this says (tests/e2e/shimroute.rs).
package route

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// Outcome is what helm does with args: "run PATH", "help PATH", "error find",
// "error flags PATH", "error args PATH" or "error root" (PATH: the command's path below
// the root, "helm" for the root itself).
func Outcome(newRoot func(args []string) (*cobra.Command, error), args []string) string {
	root, err := newRoot(args)
	if err != nil {
		return "error root"
	}
	// What ExecuteC prepares before Find (the unexported __complete commands aside).
	root.InitDefaultHelpCmd()
	root.InitDefaultCompletionCmd(args...)
	cmd, rest, err := root.Find(args)
	if err != nil {
		return "error find"
	}
	name := strings.TrimPrefix(cmd.CommandPath(), root.Name()+" ")
	// What execute does, in its order, up to running the command.
	cmd.InitDefaultHelpFlag()
	cmd.InitDefaultVersionFlag()
	if err := cmd.ParseFlags(rest); err != nil {
		return "error flags " + name
	}
	if help, err := cmd.Flags().GetBool("help"); err != nil || help {
		return "help " + name
	}
	if !cmd.Runnable() {
		return "help " + name
	}
	positional := cmd.Flags().Args()
	if cmd.DisableFlagParsing {
		positional = rest
	}
	if err := cmd.ValidateArgs(positional); err != nil {
		return "error args " + name
	}
	if err := cmd.ValidateRequiredFlags(); err != nil {
		return "error flags " + name
	}
	if err := cmd.ValidateFlagGroups(); err != nil {
		return "error flags " + name
	}
	return "run " + name
}

// Flag is one flag as pflag holds it.
type Flag struct {
	Name      string `json:"name"`
	Shorthand string `json:"shorthand"`
	// NoOptDefVal: the value given when the flag is written without one (booleans,
	// optional values); empty when the flag always takes a value.
	NoOptDefVal string `json:"no_opt_def_val"`
	Type        string `json:"type"`
	Global      bool   `json:"global"`
}

// Flags lists the root's persistent (global) flags and `upgrade`'s own flags.
func Flags(root *cobra.Command) []Flag {
	var out []Flag
	add := func(global bool) func(f *pflag.Flag) {
		return func(f *pflag.Flag) {
			out = append(out, Flag{f.Name, f.Shorthand, f.NoOptDefVal, f.Value.Type(), global})
		}
	}
	root.PersistentFlags().VisitAll(add(true))
	for _, c := range root.Commands() {
		if c.Name() == "upgrade" {
			c.LocalNonPersistentFlags().VisitAll(add(false))
		}
	}
	return out
}

// Serve answers on stdout, one JSON line per line of stdin: with "--flags", the flag
// list; else each stdin line is a JSON array of strings (an argv after `helm`) and the
// answer its Outcome as a JSON string. reset puts helm's global settings back between
// argvs (a bad --color stays in them otherwise).
func Serve(newRoot func(args []string) (*cobra.Command, error), reset func()) {
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	if len(os.Args) > 1 && os.Args[1] == "--flags" {
		root, err := newRoot(nil)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		_ = json.NewEncoder(out).Encode(Flags(root))
		return
	}
	in := bufio.NewReader(os.Stdin)
	for {
		line, err := in.ReadBytes('\n')
		if len(strings.TrimSpace(string(line))) > 0 {
			var args []string
			if jerr := json.Unmarshal(line, &args); jerr != nil {
				fmt.Fprintln(os.Stderr, "bad input line:", jerr)
				os.Exit(2)
			}
			answer, _ := json.Marshal(Outcome(newRoot, args))
			out.Write(answer)
			out.WriteByte('\n')
			reset()
		}
		if err == io.EOF {
			return
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
	}
}
