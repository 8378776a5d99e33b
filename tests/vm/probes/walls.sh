#!/bin/bash
# The sandbox-wall probes of tests/vm/test_sandbox_walls.py, one `name=result` line each.
#
#   walls.sh probe GUEST_IP   every wall probe; also leaves markers in /tmp, /var/tmp and $HOME
#   walls.sh markers          whether those markers are visible here
#
# The same script runs inside a run's sandbox and, as the positive control, as root in the guest
# outside it: a probe only proves a wall if it succeeds outside. Results are `ok` or
# `fail:<exit code>:<first line of the error>`; value probes print the value.
set -u

# Run one probe with no stdin (su would read a password) and a deadline; print its verdict.
probe() {
    local name=$1 out rc
    shift
    out=$(timeout 20 bash -c '"$@"' probe "$@" </dev/null 2>&1)
    rc=$?
    if [ "$rc" -eq 0 ]; then
        echo "$name=ok"
    else
        echo "$name=fail:$rc:$(printf '%s' "$out" | head -n 1 | tr -d '\r')"
    fi
}

# Write then remove a file: is this directory writable?
writable() { echo probe >"$1/.vmsbx-walls-probe" && rm -f "$1/.vmsbx-walls-probe"; }

# Read the SSH banner of HOST:22: is the guest's own sshd reachable?
ssh_banner() {
    exec 3<>"/dev/tcp/$1/22" && IFS= read -r -t 10 banner <&3 && [[ $banner == SSH-2.0* ]]
}

ptrace_child() {
    python3 - <<'PY'
import ctypes, os, signal, sys, time
PTRACE_ATTACH, PTRACE_DETACH = 16, 17
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.restype = ctypes.c_long
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
child = os.fork()
if child == 0:
    time.sleep(60)
    os._exit(0)
attached = libc.ptrace(PTRACE_ATTACH, child, None, None)
errno = ctypes.get_errno()
os.kill(child, signal.SIGKILL)
while True:
    _, status = os.waitpid(child, 0)
    if os.WIFEXITED(status) or os.WIFSIGNALED(status):
        break
if attached != 0:
    sys.exit(f"ptrace(PTRACE_ATTACH): {os.strerror(errno)}")
PY
}

# Set the setuid bit on a file we own (RestrictSUIDSGID= forbids it).
chmod_suid() {
    local file=.vmsbx-walls-suid
    cp /usr/bin/true "$file" && chmod u+s "$file" && [ -u "$file" ]
    local rc=$?
    rm -f "$file"
    return "$rc"
}

# Leave a marker and read it back (the write really happened).
mark() { echo marker >"$1/vmsbx-walls-marker" && [ -s "$1/vmsbx-walls-marker" ]; }

modules_dir() { echo "/lib/modules/$(uname -r)/kernel/drivers/net"; }
load_module() { /usr/sbin/modprobe dummy numdummies=0 && /usr/sbin/modprobe -r dummy; }
insmod_module() { /usr/sbin/insmod "$(modules_dir)/dummy.ko" numdummies=0 && /usr/sbin/rmmod dummy; }

# `timeout` runs the probes in a child bash: it must know these functions.
export -f writable ssh_banner ptrace_child chmod_suid modules_dir load_module insmod_module mark

probes() {
    local guest_ip=$1
    # Identity.
    echo "uid=$(id -u)"
    echo "id=$(id)"
    # Files.
    probe workspace_write writable "$PWD"
    probe etc_write writable /etc
    probe usr_write writable /usr
    probe home_write writable /home
    probe root_write writable /root
    probe root_read cat /root/vmsbx-walls-secret
    probe shadow_read head -c 1 /etc/shadow
    # Network: the guest's own sshd, on loopback and on the guest's address; DNS.
    probe ssh_loopback ssh_banner 127.0.0.1
    probe ssh_guest_ip ssh_banner "$guest_ip"
    probe dns getent ahostsv4 walls-probe.vmsbx.test
    # Privileged operations.
    probe mount_tmpfs sh -c 'mount -t tmpfs vmsbx-walls /mnt && umount /mnt'
    probe unshare_user unshare -U true
    probe unshare_net unshare -n true
    probe ptrace_child ptrace_child
    probe proc1_environ head -c 1 /proc/1/environ
    probe su su -c true root
    if command -v sudo >/dev/null; then echo "sudo_present=yes"; else echo "sudo_present=no"; fi
    probe sudo sudo -n true
    probe chmod_suid chmod_suid
    echo "suid_euid=$(/usr/local/bin/vmsbx-walls-suid-id -u 2>&1 | head -n 1)"
    probe modprobe load_module
    probe insmod insmod_module
    # Processes.
    echo "pid_count=$(find /proc -mindepth 1 -maxdepth 1 -name '[0-9]*' | wc -l)"
    echo "commands=$(ps -e -o comm= | sort -u | paste -sd, -)"
    echo "process_uids=$(ps -e -o uid= | tr -d " " | sort -u | paste -sd, -)"
    # Leave markers for the next run to look for (and read them back: the writes happened).
    probe mark_tmp mark /tmp
    probe mark_var_tmp mark /var/tmp
    probe mark_home mark "$HOME"
}

markers() {
    local where
    for where in /tmp /var/tmp "$HOME"; do
        if [ -e "$where/vmsbx-walls-marker" ]; then
            echo "marker:$where=present"
        else
            echo "marker:$where=absent"
        fi
    done
}

case "${1:-}" in
    probe) probes "$2" ;;
    markers) markers ;;
    *) echo "usage: walls.sh probe GUEST_IP | markers" >&2; exit 2 ;;
esac
