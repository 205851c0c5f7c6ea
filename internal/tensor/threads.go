package tensor

/*
#include <dlfcn.h>
#include <stddef.h>

int at_get_num_threads();

// libtorch's at::set_num_threads also changes the process default that new
// threads start from; OpenMP's own setter changes the calling thread's only.
// libgomp is loaded with libtorch, so its symbol is looked up at run time
// rather than linked.
static int ef_set_thread_threads(int n) {
	static void (*set)(int);
	if (set == NULL) {
		set = (void (*)(int))dlsym(RTLD_DEFAULT, "omp_set_num_threads");
		if (set == NULL) {
			return -1;
		}
	}
	at_get_num_threads(); // libtorch's per-thread lazy set-up first, or it would undo ours
	set(n);
	return 0;
}
*/
import "C"

import "errors"

// UseThreads sets the intra-op threads of operations on the scope's OS
// thread until Close, which restores the thread's previous count. Unlike
// SetThreads it leaves the process default and every other thread alone,
// so that concurrent scopes can each compute on their share of the cores.
func (s *Scope) UseThreads(n int) error {
	if n <= 0 {
		return errors.New("tensor: UseThreads needs a positive count")
	}
	prev := Threads()
	if prev == n {
		return nil
	}
	if C.ef_set_thread_threads(C.int(n)) != 0 {
		return errors.New("tensor: OpenMP's omp_set_num_threads is not loaded")
	}
	if s.threads == 0 {
		s.threads = prev
	}
	return nil
}

// restoreThreads undoes UseThreads (from Close).
func (s *Scope) restoreThreads() {
	if s.threads > 0 {
		C.ef_set_thread_threads(C.int(s.threads))
		s.threads = 0
	}
}
