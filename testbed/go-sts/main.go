// go-sts: the program of the node image localhost/go-sts:dev (testbed/images.sh), an
// image with no shell. aws-sdk-go-v2 runs credential_process through `sh -c`, so such an
// image cannot use credential_process; this program shows whether the SDK's default
// chain (env, shared config, the container provider of AWS_CONTAINER_CREDENTIALS_FULL_URI,
// ...) gives it working credentials.
//
// It loads the default config once and keeps one STS client for its whole life, then
// calls GetCallerIdentity every INTERVAL seconds (default 5), one line per call:
//
//	<UTC time RFC3339> ok <Arn> expires=<expiry of the credentials that signed the call>
//	<UTC time RFC3339> FAILED <error>
//
// With --once it makes one call and exits 0 on success, 1 on failure. It never prints
// a key id, secret or session token. The SDK's own environment applies (AWS_REGION,
// AWS_ENDPOINT_URL_STS, AWS_CONTAINER_CREDENTIALS_FULL_URI, ...).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/sts"
)

// lastUsed wraps the config's (cached) credentials provider and keeps the credentials it
// last handed to the signer, so a line can name their expiry without a Retrieve of its
// own: the container provider's cache refreshes 5 minutes before expiry, so inside that
// window every extra Retrieve would be an extra request to the credentials endpoint.
//
// The cache stores Expires moved back by its ExpiryWindow (the container provider's is
// 5 minutes); window is that window, read from the cache's options as the SDK set them,
// and added back so the line shows the expiry the credentials endpoint gave.
type lastUsed struct {
	aws.CredentialsProvider
	window time.Duration
	mu     sync.Mutex
	last   aws.Credentials
}

func (p *lastUsed) Retrieve(ctx context.Context) (aws.Credentials, error) {
	c, err := p.CredentialsProvider.Retrieve(ctx)
	if err == nil {
		p.mu.Lock()
		p.last = c
		p.mu.Unlock()
	}
	return c, err
}

func (p *lastUsed) expiry() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.last.CanExpire {
		return "never"
	}
	return p.last.Expires.Add(p.window).UTC().Format(time.RFC3339)
}

// ProviderSources passes the wrapped provider's sources on (the SDK's user agent names them).
func (p *lastUsed) ProviderSources() []aws.CredentialSource {
	if s, ok := p.CredentialsProvider.(aws.CredentialProviderSource); ok {
		return s.ProviderSources()
	}
	return nil
}

func now() string { return time.Now().UTC().Format(time.RFC3339) }

func failed(err error) {
	// One line per call, whatever the error's text holds.
	fmt.Printf("%s FAILED %s\n", now(), strings.Join(strings.Fields(err.Error()), " "))
}

func interval() (time.Duration, error) {
	v := os.Getenv("INTERVAL")
	if v == "" {
		return 5 * time.Second, nil
	}
	s, err := strconv.ParseFloat(v, 64)
	if err != nil || s <= 0 {
		return 0, fmt.Errorf("INTERVAL=%q: want a number of seconds above 0", v)
	}
	return time.Duration(s * float64(time.Second)), nil
}

func main() {
	once := flag.Bool("once", false, "one call: exit 0 on success, 1 on failure")
	flag.Parse()
	every, err := interval()
	if err != nil {
		fmt.Fprintln(os.Stderr, "go-sts:", err)
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	// Only reads the cache's options (the last cache built wraps cfg.Credentials); with
	// a jitter the cache's Expires is not the endpoint's, so no window is added back.
	var window time.Duration
	cfg, err := config.LoadDefaultConfig(ctx, config.WithCredentialsCacheOptions(func(o *aws.CredentialsCacheOptions) {
		window = 0
		if o.ExpiryWindowJitterFrac == 0 {
			window = o.ExpiryWindow
		}
	}))
	if err != nil {
		failed(err)
		os.Exit(1)
	}
	creds := &lastUsed{CredentialsProvider: cfg.Credentials, window: window}
	if cfg.Credentials != nil {
		cfg.Credentials = creds
	}
	client := sts.NewFromConfig(cfg)

	call := func() bool {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		out, err := client.GetCallerIdentity(cctx, &sts.GetCallerIdentityInput{})
		if err != nil {
			failed(err)
			return false
		}
		fmt.Printf("%s ok %s expires=%s\n", now(), aws.ToString(out.Arn), creds.expiry())
		return true
	}

	if *once {
		if !call() {
			os.Exit(1)
		}
		return
	}
	for {
		call()
		select {
		case <-ctx.Done():
			return
		case <-time.After(every):
		}
	}
}
