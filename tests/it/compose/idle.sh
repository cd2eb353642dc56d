#!/bin/sh
# The stand-ins' idle process (the agent's AGENT_COMMAND, the internet container): as PID 1
# it must handle SIGTERM itself, or the engine waits out the grace period and kills it.
trap 'exit 0' TERM INT
while :; do
  sleep 1 &
  wait $!
done
