package daemon

import (
	"bytes"
	"os"
	"os/exec"
	"strings"
	"testing"
)

func TestSetupStdio(t *testing.T) {
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), helperEnv+"=stdio")
	// A pipe nobody writes to: the helper would block reading it.
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	defer pw.Close()
	cmd.Stdin = pr
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%v: %s", err, stderr.String())
	}
	if !strings.Contains(stderr.String(), "stdio ok") {
		t.Errorf("stderr %q", stderr.String())
	}
}

func TestSetupStdioSurvivesBrokenStdout(t *testing.T) {
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), helperEnv+"=sigpipe")
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = pw
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	pr.Close() // the reader goes away, as when `| tee` dies
	if err := cmd.Wait(); err != nil {
		t.Fatalf("helper died writing to a closed pipe: %v: %s", err, stderr.String())
	}
	if !strings.Contains(stderr.String(), "broken pipe") {
		t.Errorf("want EPIPE reported, got %q", stderr.String())
	}
}
