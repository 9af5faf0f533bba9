package transport_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/quilt/quilt/quiltcore/transport"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testCA is a throwaway CA and a server certificate for 127.0.0.1/localhost.
type testCA struct {
	pool   *x509.CertPool
	server tls.Certificate
}

var (
	caOnce sync.Once
	ca     testCA
)

func newTestCA(t testing.TB) testCA {
	t.Helper()
	caOnce.Do(func() {
		caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		now := time.Now()
		caTmpl := &x509.Certificate{
			SerialNumber:          big.NewInt(1),
			Subject:               pkix.Name{CommonName: "quilt test CA"},
			NotBefore:             now.Add(-time.Hour),
			NotAfter:              now.Add(time.Hour),
			IsCA:                  true,
			KeyUsage:              x509.KeyUsageCertSign,
			BasicConstraintsValid: true,
		}
		caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		caCert, _ := x509.ParseCertificate(caDER)
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(2),
			Subject:      pkix.Name{CommonName: "127.0.0.1"},
			NotBefore:    now.Add(-time.Hour),
			NotAfter:     now.Add(time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
			DNSNames:     []string{"localhost"},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		ca.pool = x509.NewCertPool()
		ca.pool.AddCert(caCert)
		ca.server = tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	})
	return ca
}

// recorder is a Handler that records everything, for assertions.
type recorder struct {
	mu      sync.Mutex
	lines   transport.LineSplitter
	got     []string
	inInput int
	overlap bool
	closed  []error
	linec   chan string   // every line, if non-nil
	closedc chan struct{} // closed on Closed
	onLine  func(c transport.Conn, line string)
	// stopped is set by a test's onLine when it closed the conn; an Input
	// call after that is a contract violation.
	stopped    bool
	inputAfter bool
}

func newRecorder() *recorder {
	return &recorder{linec: make(chan string, 1<<16), closedc: make(chan struct{})}
}

func (r *recorder) Input(c transport.Conn, data []byte) {
	r.mu.Lock()
	r.inInput++
	if r.stopped {
		r.inputAfter = true
	}
	if r.inInput > 1 {
		r.overlap = true
	}
	r.mu.Unlock()
	r.lines.Feed(data)
	for line, _, ok := r.lines.Next(); ok; line, _, ok = r.lines.Next() {
		s := string(line)
		r.mu.Lock()
		r.got = append(r.got, s)
		r.mu.Unlock()
		r.linec <- s
		if r.onLine != nil {
			r.onLine(c, s)
		}
	}
	r.mu.Lock()
	r.inInput--
	r.mu.Unlock()
}

func (r *recorder) Closed(_ transport.Conn, err error) {
	r.mu.Lock()
	r.closed = append(r.closed, err)
	n := len(r.closed)
	r.mu.Unlock()
	if n == 1 {
		close(r.closedc)
	}
}

func (r *recorder) line(t testing.TB) string {
	t.Helper()
	select {
	case l := <-r.linec:
		return l
	case <-time.After(10 * time.Second):
		t.Fatal("timed out waiting for the handler to get a line")
		return ""
	}
}

// closedWith waits for Closed and checks it came exactly once.
func (r *recorder) closedWith(t testing.TB, c transport.Conn) error {
	t.Helper()
	select {
	case <-r.closedc:
	case <-time.After(10 * time.Second):
		t.Fatal("timed out waiting for Closed")
	}
	waitDone(t, c)
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.closed) != 1 {
		t.Fatalf("Closed called %d times: %v", len(r.closed), r.closed)
	}
	if r.overlap {
		t.Fatal("Input was called concurrently")
	}
	return r.closed[0]
}

func waitDone(t testing.TB, c transport.Conn) {
	t.Helper()
	select {
	case <-c.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("timed out waiting for Done")
	}
}
