// Command gendocs writes one package's man pages and shell completions into a
// staging root (packaging/release/build.sh runs it):
//
//	gendocs -o DIR bootcert|bootcert-admin
//
// The pages' date is SOURCE_DATE_EPOCH (reproducible builds), else now.
package main

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/bootcert/bootcert/internal/gendocs"
)

func main() {
	out := flag.String("o", "", "root directory to write usr/share/... into")
	flag.Parse()
	if *out == "" || flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: gendocs -o DIR bootcert|bootcert-admin")
		os.Exit(2)
	}
	pkg, ok := gendocs.Packages()[flag.Arg(0)]
	if !ok {
		fmt.Fprintf(os.Stderr, "gendocs: unknown package %q (bootcert, bootcert-admin)\n", flag.Arg(0))
		os.Exit(2)
	}
	date := time.Now().UTC()
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		sec, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			fmt.Fprintf(os.Stderr, "gendocs: SOURCE_DATE_EPOCH %q: %v\n", s, err)
			os.Exit(2)
		}
		date = time.Unix(sec, 0).UTC()
	}
	for i, t := range pkg.Tools {
		if _, err := gendocs.Write(*out, t, date, pkg.Completions[i]); err != nil {
			fmt.Fprintln(os.Stderr, "gendocs:", err)
			os.Exit(1)
		}
	}
}
