package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"

	"github.com/emoflow/emoflow/internal/tensor"
)

// peerProcess is a running benchmark peer (tools/reference/bench_hf.py or
// bench_chatglm_cpp.py): it scores the workload when asked, one request at
// a time, so that its runs interleave with the engine's and all sides see
// the same machine load.
type peerProcess struct {
	name string
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  *bufio.Scanner
}

// hfRequest and hfAnswer are bench_hf.py's protocol, one JSON object a line.
type hfRequest struct {
	DType    string `json:"dtype"`
	Batch    int    `json:"batch"`
	Strategy string `json:"strategy"`
	LogProbs bool   `json:"logprobs"`
}

type hfAnswer struct {
	Seconds    float64     `json:"seconds"`
	CPUSeconds float64     `json:"cpu_seconds"`
	Messages   int         `json:"messages"`
	LogProbs   [][]float64 `json:"logprobs"`
}

// hfSide is a running bench_hf.py.
type hfSide struct{ *peerProcess }

// startHF starts bench_hf.py on modelDir and the workload file.
func startHF(python, script, modelDir, workloadPath, attention string, threads int) (*hfSide, error) {
	p, err := startPeer("transformers side", exec.Command(python, script, "--model", modelDir, "--workload", workloadPath,
		"--threads", strconv.Itoa(threads), "--attention", attention))
	if err != nil {
		return nil, err
	}
	return &hfSide{p}, nil
}

// run asks for one pass over the workload.
func (h *hfSide) run(req hfRequest) (hfAnswer, error) {
	var a hfAnswer
	err := h.call(req, &a)
	return a, err
}

// startPeer starts cmd with its stderr on ours.
func startPeer(name string, cmd *exec.Cmd) (*peerProcess, error) {
	cmd.Stderr = os.Stderr
	if tensor.HostMemory() == "kept" {
		// The peer's C heap configured as the engine's (package tensor):
		// torch's allocator is malloc too, and gains from it as much.
		cmd.Env = append(os.Environ(), "GLIBC_TUNABLES="+tensor.HostMemoryTunables)
	}
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s (%s): %w", name, cmd.Path, err)
	}
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 1<<20), 256<<20) // log-probabilities of every message
	return &peerProcess{name: name, cmd: cmd, in: in, out: sc}, nil
}

// call sends req and decodes the answer line into answer.
func (p *peerProcess) call(req, answer any) error {
	b, err := json.Marshal(req)
	if err != nil {
		return err
	}
	if _, err := p.in.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("%s: %w", p.name, err)
	}
	if !p.out.Scan() {
		if err := p.out.Err(); err != nil {
			return fmt.Errorf("%s: %w", p.name, err)
		}
		return fmt.Errorf("%s exited without answering %s", p.name, b)
	}
	if err := json.Unmarshal(p.out.Bytes(), answer); err != nil {
		return fmt.Errorf("%s answered %q: %w", p.name, p.out.Text(), err)
	}
	return nil
}

// close ends the process (end of input) and waits for it.
func (p *peerProcess) close() error {
	p.in.Close()
	if err := p.cmd.Wait(); err != nil {
		return fmt.Errorf("%s: %w", p.name, err)
	}
	return nil
}
