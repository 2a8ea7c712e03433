#!/bin/sh
# GitHub Actions self-hosted runner: job-completed hook (see job-started.sh).
# Untags the runner's cgroup: connections after the job are no longer masked
# (nor intercepted).
set -eu
masker=${MASKER_BIN:-/usr/local/bin/masker}
sudo=${MASKER_SUDO-sudo -n}
state="${RUNNER_TEMP:-/tmp}/masker-cgroup"
if [ -f "$state" ]; then
    $sudo "$masker" untag "$(cat "$state")"
    rm -f "$state"
fi
docker_state="${RUNNER_TEMP:-/tmp}/masker-docker-cgroup"
if [ -f "$docker_state" ]; then
    $sudo "$masker" untag "$(cat "$docker_state")"
    rm -f "$docker_state"
fi
