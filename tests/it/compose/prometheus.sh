#!/bin/sh
# Stand-in for Prometheus (tests/it/compose.rs): answers the service's healthcheck,
# GET http://127.0.0.1:9090/-/healthy, from /www; the test scrapes the gate's admin
# listener from this container (the ops network) with busybox wget. Ignores the compose
# file's Prometheus flags; exits 0 on SIGTERM.
trap 'exit 0' TERM INT
httpd -f -p 127.0.0.1:9090 -h /www &
wait $!
