package metrics

import (
	"os"
	"syscall"
)

func inode(fi os.FileInfo) uint64 {
	if fi == nil {
		return 0
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}
