package ingest

import (
	"context"
	"reflect"
	"testing"
	"time"
)

func TestBatchBySize(t *testing.T) {
	in := make(chan int)
	out := make(chan []int)
	// A wait far longer than the test: only size can close batches.
	go batch(context.Background(), in, out, 3, time.Hour)
	go func() {
		for i := range 7 {
			in <- i
		}
		close(in)
	}()
	var got [][]int
	for b := range out {
		got = append(got, b)
	}
	want := [][]int{{0, 1, 2}, {3, 4, 5}, {6}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("batches %v, want %v", got, want)
	}
}

func TestBatchByWait(t *testing.T) {
	in := make(chan int)
	out := make(chan []int)
	go batch(context.Background(), in, out, 100, 10*time.Millisecond)
	in <- 1
	in <- 2
	// The batch is far from full: it must leave after the wait without
	// more input and without in being closed.
	select {
	case b := <-out:
		if !reflect.DeepEqual(b, []int{1, 2}) {
			t.Fatalf("batch %v, want [1 2]", b)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a partial batch was never sent")
	}
	in <- 3
	close(in)
	if b := <-out; !reflect.DeepEqual(b, []int{3}) {
		t.Fatalf("batch %v, want [3]", b)
	}
	if _, open := <-out; open {
		t.Fatal("out not closed after in was closed")
	}
}

func TestBatchStopsOnCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	in := make(chan int)
	out := make(chan []int) // nobody reads: the batcher blocks on a full batch
	done := make(chan struct{})
	go func() {
		batch(ctx, in, out, 1, time.Hour)
		close(done)
	}()
	in <- 1
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("batch did not return after cancel")
	}
}
