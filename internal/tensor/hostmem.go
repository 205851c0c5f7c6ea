package tensor

/*
#include <limits.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>

// emoflow_host_memory_kept is 1 when emoflow_keep_host_memory applied its
// settings, 0 when EMOFLOW_HOST_MEMORY=release turned them off, and a
// negative number naming the mallopt call glibc refused.
static int emoflow_host_memory_kept;

// Runs when the binary is loaded, before the Go runtime starts its threads:
// a thread takes its malloc arena at its first allocation, so M_ARENA_MAX
// set any later leaves the early threads on arenas of their own.
__attribute__((constructor)) static void emoflow_keep_host_memory(void) {
	const char *mode = getenv("EMOFLOW_HOST_MEMORY");
	if (mode != NULL && strcmp(mode, "release") == 0) {
		emoflow_host_memory_kept = 0;
		return;
	}
	if (!mallopt(M_ARENA_MAX, 1)) { emoflow_host_memory_kept = -1; return; }
	if (!mallopt(M_TRIM_THRESHOLD, INT_MAX)) { emoflow_host_memory_kept = -2; return; }
	if (!mallopt(M_MMAP_MAX, 0)) { emoflow_host_memory_kept = -3; return; }
	emoflow_host_memory_kept = 1;
}

static int emoflow_host_memory(void) { return emoflow_host_memory_kept; }
*/
import "C"

import "fmt"

// HostMemoryTunables are the same settings as glibc tunables, for processes
// that do not link this package (the benchmarks' Python peers get them so
// that both sides of a comparison run on the same heap).
const HostMemoryTunables = "glibc.malloc.arena_max=1:glibc.malloc.trim_threshold=2147483647:glibc.malloc.mmap_max=0"

// HostMemory says how the C heap of this process is configured ("kept" or
// "released (why)"); see the package comment's "Host memory" section.
func HostMemory() string {
	switch rc := int(C.emoflow_host_memory()); rc {
	case 1:
		return "kept"
	case 0:
		return "released (EMOFLOW_HOST_MEMORY=release)"
	default:
		return fmt.Sprintf("released (glibc refused malloc setting %d)", -rc)
	}
}
