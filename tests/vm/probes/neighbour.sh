#!/bin/bash
# One of two runs at once (test_sandbox_walls.py): leaves a mark in its /tmp, waits for the
# test's `go` file in its workspace, then reports what it can see of the other run.
# Its workspace holds `who` (its tag) and `code` (its exit code).
set -u
tag=$(cat who)
echo "$tag" >"/tmp/mark-$tag"
for _ in $(seq 1200); do
    [ -e go ] && break
    sleep 0.1
done
echo "go=$([ -e go ] && echo yes || echo no)"
echo "tag=$tag"
echo "unit=$(sed -n 's|^0::/system.slice/||p' /proc/self/cgroup)"
echo "workspace=$(pwd -P)"
echo "workspace_files=$(find . -mindepth 1 -maxdepth 1 -printf '%f\n' | sort | paste -sd, -)"
echo "tmp_marks=$(find /tmp -maxdepth 1 -name 'mark-*' -printf '%f\n' | sort | paste -sd, -)"
echo "tags_seen=$(cat /var/lib/vmsbx-ws-*/who /var/lib/private/vmsbx-ws-*/who 2>/dev/null | sort -u | paste -sd, -)"
echo "uids_seen=$(ps -e -o uid= | tr -d ' ' | sort -u | paste -sd, -)"
echo "uid=$(id -u)"
exit "$(cat code)"
