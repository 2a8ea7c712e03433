#!/bin/sh
# GitHub Actions self-hosted runner: job-started hook.
#
# In the runner's .env (next to run.sh / the service):
#   ACTIONS_RUNNER_HOOK_JOB_STARTED=/opt/masker/job-started.sh
#   ACTIONS_RUNNER_HOOK_JOB_COMPLETED=/opt/masker/job-completed.sh
# and let the runner user run masker's tag commands as root, e.g. in sudoers:
#   runner ALL=(root) NOPASSWD: /usr/local/bin/masker tag *, /usr/local/bin/masker untag *
#
# A runner executes one job at a time and every step is a descendant of the
# runner's own cgroup (its systemd service), so the job is tagged by tagging
# that cgroup for the job's duration. The identity names the repository, so
# policy rules can match "gha-*" or one repository.
set -eu
masker=${MASKER_BIN:-/usr/local/bin/masker}
sudo=${MASKER_SUDO-sudo -n}

# Relative to the cgroup v2 mount (masker resolves it there).
cgroup=$(sed -n 's/^0:://p' /proc/self/cgroup)
if [ -z "$cgroup" ] || [ "$cgroup" = "/" ]; then
    echo "masker: the runner does not run in its own cgroup (run it as a systemd service)" >&2
    exit 1
fi
# The hook runs in a scope/child of the runner's cgroup: tag the service itself.
case "$cgroup" in
    */actions.runner.*.service/*) cgroup=${cgroup%%.service/*}.service ;;
esac
repo=$(printf '%s' "${GITHUB_REPOSITORY:-unknown}" | tr -c 'A-Za-z0-9._-' '-')
identity=$(printf 'gha-%s' "$repo" | cut -c1-64)
cgroup=${cgroup#/}

$sudo "$masker" tag "$cgroup" --identity "$identity"
echo "$cgroup" > "${RUNNER_TEMP:-/tmp}/masker-cgroup"

# Container jobs (`container:`) and service containers are started by
# dockerd, not by the runner, so they are not below the runner's cgroup.
# With Docker's daemon-wide cgroup parent (daemon.json next to this script:
# "cgroup-parent": "/masker-ci") every container lands under one cgroup;
# set MASKER_DOCKER_CGROUP_PARENT=/masker-ci in the runner's .env and the
# hook tags it for the job too. (One job at a time per runner host.)
if [ -n "${MASKER_DOCKER_CGROUP_PARENT:-}" ]; then
    parent=${MASKER_DOCKER_CGROUP_PARENT#/}
    $sudo "$masker" tag "$parent" --identity "$identity" --create
    echo "$parent" > "${RUNNER_TEMP:-/tmp}/masker-docker-cgroup"
fi
echo "masker: database connections of this job are masked as identity $identity"
