#!/bin/sh
# Prints one JSON object of the facts vmsbx checks before it trusts a guest to hold its walls.
# Batched into one command so `vmsbx up` costs one round trip.
set -u
pid1=$(cat /proc/1/comm 2>/dev/null || echo unknown)
systemd_version=$(systemctl --version 2>/dev/null | awk 'NR==1 {print $2}')
cgroup_fs=$(stat -fc %T /sys/fs/cgroup 2>/dev/null || echo none)
arch=$(uname -m)
kernel=$(uname -r)
system_state=$(systemctl is-system-running 2>/dev/null || true)
userns_max=$(cat /proc/sys/user/max_user_namespaces 2>/dev/null || echo 0)
guest_version=$(cat /usr/local/lib/vmsbx/VERSION 2>/dev/null || true)
nsjail_version=$(cat /usr/local/lib/vmsbx/nsjail/VERSION 2>/dev/null || true)
# "VERSION PLATFORM INTEGRITY" of the installed Claude Code; empty if its program is missing.
claude_installed=$(head -c 200 /usr/local/lib/vmsbx/claude/INSTALLED 2>/dev/null | tr -cd '0-9A-Za-z.+/= -' || true)
[ -x "/usr/local/lib/vmsbx/claude/${claude_installed%% *}/claude" ] || claude_installed=
# The real Python behind /usr/bin/python3 ("python3.13"): the jail binds its /etc/python3.N.
python=$(basename "$(readlink -f /usr/bin/python3 2>/dev/null)" 2>/dev/null | tr -cd '0-9a-z.')
case $python in python3.[0-9]*) ;; *) python= ;; esac
printf '{"pid1":"%s","systemd_version":"%s","cgroup_fs":"%s","arch":"%s","kernel":"%s","system_state":"%s","max_user_namespaces":"%s","guest_version":"%s","nsjail_version":"%s","claude_installed":"%s","python":"%s"}\n' \
  "$pid1" "${systemd_version:-}" "$cgroup_fs" "$arch" "$kernel" "$system_state" "$userns_max" "$guest_version" "$nsjail_version" "$claude_installed" "$python"
