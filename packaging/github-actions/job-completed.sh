#!/bin/sh
# GitHub Actions self-hosted runner: job-completed hook (see job-started.sh).
# Untags the runner's cgroup (and the Docker cgroup parent): they live on
# between jobs, so the tags are revoked, not deleted. Until the next job's
# hook tags them again, their connections to masker's targets are refused
# (SQLSTATE 28000 from the agent; EPERM in containers), never sent around
# masker; other connections are unaffected.
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
