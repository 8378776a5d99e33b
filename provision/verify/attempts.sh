#!/bin/bash
# vmsbx verify: escape attempts, as an agent would try them. One result line per attempt:
#
#   VMSBX-VERIFY<TAB>name<TAB>ok|fail<TAB>what happened
#
# `ok` means the attempt SUCCEEDED. vmsbx runs this script twice: inside a real run of the
# sandbox (VERIFY_MODE=attack, where every attempt must fail) and as root in the guest outside
# it (VERIFY_MODE=control, where every attempt must succeed, or it proves nothing).
#
#   attempts.sh run                 every attempt (or those named in VERIFY_ONLY)
#   attempts.sh aftermath TOKEN     as root after the run: which persistence attempts of TOKEN
#                                   survived it; with VERIFY_CLEAN=1 also removes what they left
#
# Settings arrive in VERIFY_* variables (see vmsbx/verify/suite.py). Network attempts aim only at
# the guest itself, the listener vmsbx started there, and the provider's gateway addresses.
set -u
here=$(cd "$(dirname "$0")" && pwd)
probe_py=$here/probe.py
mode=${VERIFY_MODE:-attack}
token=${VERIFY_TOKEN:-none}
# The planted credential's prefix, never written as one piece (nor kept in a variable, which
# would land in the environment): this file and this shell must not match themselves.
canary() { printf '%s%s' "sk-ant-api03-vmsbx" "canary-"; }
export probe_py mode token

emit() { printf 'VMSBX-VERIFY\t%s\t%s\t%s\n' "$1" "$2" "$(printf '%s' "$3" | tr -d '\r\t' | head -c 200)"; }

# attempt NAME SECONDS COMMAND...: run one attempt with no stdin and a deadline.
attempt() {
    local name=$1 seconds=$2 out rc
    shift 2
    if [ -n "${VERIFY_ONLY:-}" ] && [[ " $VERIFY_ONLY " != *" $name "* ]]; then return; fi
    # `timeout` runs the attempt in a child bash: the functions below are exported to it.
    out=$(timeout -k 2 "$seconds" bash -c '"$@"' attempt "$@" </dev/null 2>&1)
    rc=$?
    if [ "$rc" -eq 0 ]; then
        emit "$name" ok "$(printf '%s' "$out" | tail -n 1)"
    else
        emit "$name" fail "exit $rc: $(printf '%s' "$out" | grep -v '^$' | tail -n 1)"
    fi
}

py() { python3 "$probe_py" "$@"; }
leave() { mkdir -p "$1" && echo "# vmsbx verify marker, harmless" >"$1/vmsbx-verify-$token-$2"; }
# Succeeds if the directory is writable (and leaves nothing).
writable() { echo probe >"$1/.vmsbx-verify-$token" && rm -f "$1/.vmsbx-verify-$token"; }
readable() { head -c 1 "$1" >/dev/null && echo "read $1"; }
listable() { find "$1" -mindepth 1 -maxdepth 1 -printf . >/dev/null && echo "listed $1"; }

# -- host reach ---------------------------------------------------------------------------------
# Host folders a provider may share: Lima (virtiofs/9p/sshfs at the home path), WSL (/mnt/c,
# drvfs/9p), Multipass (sshfs), VirtualBox. The control also accepts the guest's own ext4 root,
# proving the search itself works.
host_mounts() {
    local types="9p virtiofs fuse.sshfs sshfs drvfs vboxsf"
    [ "$mode" = control ] && types="$types ext4"
    local found
    found=$(awk -v t=" $types " 'index(t, " " $3 " ") { print $2 }' /proc/self/mounts | head -n 3)
    for path in /mnt/c /mnt/host /Users /mnt/wsl; do [ -d "$path" ] && found="$found $path"; done
    [ -n "$found" ] && echo "host-shared folder visible: $found"
}
# One address per line.
gateways() {
    # QEMU/Lima slirp host alias, Lima's user-v2 gateway, and the default route's gateway.
    local gw
    gw=$(awk '$2 == "00000000" { h=$3; printf "%d.%d.%d.%d\n", "0x" substr(h,7,2), "0x" substr(h,5,2), "0x" substr(h,3,2), "0x" substr(h,1,2) }' /proc/net/route 2>/dev/null | head -n 1)
    printf '%s\n' 10.0.2.2 192.168.5.2
    if [ -n "$gw" ]; then echo "$gw"; fi
}
host_gateway() {
    if [ "$mode" = control ]; then py tcp_any 22 "$VERIFY_GUEST_IP"; else mapfile -t gws < <(gateways) && py tcp_any 22 "${gws[@]}"; fi
}
host_listener() {
    # A listener vmsbx opened on the host's loopback, through the provider's host alias.
    if [ "$mode" = control ]; then py tcp "$VERIFY_GUEST_IP" "$VERIFY_TCP_PORT"
    else mapfile -t gws < <(gateways) && py tcp_any "$VERIFY_HOST_PORT" "${gws[@]}"; fi
}

# -- guest files --------------------------------------------------------------------------------
# Another run's workspace (vmsbx plants a decoy one beside the real ones while it verifies).
other_workspaces() {
    local own
    own=$(basename "$PWD")
    find /var/lib/private -mindepth 1 -maxdepth 1 -name 'vmsbx-ws-*' ! -name "$own" | grep -m 1 .
}
vmsbx_state() { listable /var/lib/vmsbx/runs; }
guest_ssh_keys() { readable /etc/ssh/ssh_host_ed25519_key; }

# -- privilege ----------------------------------------------------------------------------------
setuid_bit() {
    local file=./.vmsbx-verify-suid
    cp /usr/bin/true "$file" && chmod u+s "$file" && [ -u "$file" ]
    local rc=$?
    rm -f "$file"
    return "$rc"
}
mount_tmpfs() { local d; d=$(mktemp -d) && mount -t tmpfs vmsbx-verify "$d" && umount "$d" && rmdir "$d"; }
kernel_module() {
    local ko
    ko=$(find "/lib/modules/$(uname -r)/kernel/drivers/net" -name 'dummy.ko*' | head -n 1)
    /usr/sbin/insmod "$ko" numdummies=0 && /usr/sbin/rmmod dummy
}
proc_sys_write() {
    # Write back the value already there: changes nothing, but needs write access.
    local value
    value=$(cat /proc/sys/kernel/printk_ratelimit) && echo "$value" >/proc/sys/kernel/printk_ratelimit
}
raw_device() {
    local disk
    disk=$(lsblk -dnpo NAME 2>/dev/null | head -n 1)
    readable "${disk:-/dev/vda}"
}
su_root() { su -c true root; }
cron_job() { leave /etc/cron.d cron || leave /var/spool/cron/crontabs cron; }
git_hooks() { leave /usr/share/git-core/templates/hooks hook || leave "$HOME/.config/git/hooks" hook; }

# -- privileged services ------------------------------------------------------------------------
journal_forge() { py journal_forge "vmsbx-verify-$token-journal"; }

# -- network ------------------------------------------------------------------------------------
ipv6_loopback() { py tcp ::1 22; }
proxy_bypass() {
    # Ignore any proxy settings and go straight to an endpoint the policy does not grant.
    env -u http_proxy -u https_proxy -u HTTP_PROXY -u HTTPS_PROXY -u ALL_PROXY \
        python3 "$probe_py" tcp "$VERIFY_GUEST_IP" "$VERIFY_TCP_PORT"
}

# -- resources ----------------------------------------------------------------------------------
# Write until the disk is full; succeeds only if more than the cap fitted.
fill() {
    local file=$1 cap=$2 written
    dd if=/dev/zero of="$file" bs=1M count=$(( cap / 1048576 + 16 )) status=none 2>/dev/null
    written=$(stat -c %s "$file" 2>/dev/null || echo 0)
    rm -f "$file"
    echo "wrote $((written / 1048576)) MiB (cap $((cap / 1048576)) MiB)"
    [ "$written" -gt "$cap" ]
}
fill_tmp() {
    local dir=/tmp
    # The control must not fill the guest's RAM-backed /tmp: the guest's disk shows the same thing.
    [ "$mode" = control ] && dir=/var/tmp
    fill "$dir/.vmsbx-verify-fill-$token" "$VERIFY_TMP_SIZE"
}

# -- secrets ------------------------------------------------------------------------------------
# The canary vmsbx placed where a credential could leak (guest files, a root process's
# arguments and environment, the guest journal, the launching host process's environment).
secret_env() { py proc_search environ "$(canary)"; }
secret_argv() { py proc_search cmdline "$(canary)"; }
secret_files() {
    local hits
    hits=$(grep -rlsF -- "$(canary)" /etc /root /home /var/lib /tmp /var/tmp "$HOME" "$PWD" 2>/dev/null \
        | grep -v "/probe.py$\|/attempts.sh$" | head -n 3)
    [ -n "$hits" ] && echo "canary in: $hits"
}
secret_journal() {
    journalctl --no-pager -q -o cat 2>/dev/null | grep -qF -- "$(canary)" && echo "canary in the journal"
}

run_all() {
    local guest_ip=$VERIFY_GUEST_IP
    attempt host_mounts 10 host_mounts
    attempt host_gateway 15 host_gateway
    attempt host_listener 15 host_listener
    attempt shadow_read 10 readable /etc/shadow
    attempt root_home 10 listable /root
    attempt other_workspaces 10 other_workspaces
    attempt vmsbx_state 10 vmsbx_state
    attempt guest_ssh_keys 10 guest_ssh_keys
    attempt etc_write 10 leave /etc verify
    attempt usr_local_write 10 leave /usr/local/bin verify
    attempt var_tmp_persist 10 leave /var/tmp persist
    attempt home_dotfile 10 leave "$HOME" dotfile
    attempt cron_job 10 cron_job
    attempt systemd_user_unit 10 leave "$HOME/.config/systemd/user" unit
    attempt git_hooks 10 git_hooks
    attempt su_root 10 su_root
    attempt setuid_bit 10 setuid_bit
    attempt capabilities 10 py capabilities
    attempt mount 10 mount_tmpfs
    attempt user_namespace 10 py unshare_user
    attempt ptrace 10 py ptrace
    attempt kernel_module 15 kernel_module
    attempt keyctl 10 py keyctl
    attempt bpf 10 py bpf
    attempt perf_event 10 py perf_event
    attempt proc_sys_write 10 proc_sys_write
    attempt raw_device 10 raw_device
    attempt dbus_system 10 py unix /run/dbus/system_bus_socket
    attempt systemd_private 10 py unix /run/systemd/private
    attempt journal_forge 10 journal_forge
    attempt abstract_unix 10 py unix "@vmsbx-verify-$token"
    if [ "$mode" = control ]; then
        attempt tiocsti 10 script -qec "python3 $probe_py tiocsti" /dev/null
    else
        attempt tiocsti 10 py tiocsti
    fi
    attempt tcp_guest 10 py tcp "$guest_ip" "$VERIFY_TCP_PORT"
    attempt tcp_loopback 10 py tcp 127.0.0.1 22
    attempt ipv6_loopback 10 ipv6_loopback
    attempt udp_dns 10 py udp "$guest_ip" "$VERIFY_UDP_PORT"
    attempt icmp 10 py icmp "$guest_ip"
    attempt proxy_bypass 10 proxy_bypass
    attempt secret_env 20 secret_env
    attempt secret_argv 20 secret_argv
    attempt secret_files 30 secret_files
    attempt secret_journal 30 secret_journal
    attempt open_files 30 py open_files "$VERIFY_OPEN_FILES"
    attempt fill_workspace 60 fill "./.vmsbx-verify-fill" "$VERIFY_WORKSPACE_SIZE"
    attempt fill_tmp 60 fill_tmp
    if [ "$mode" = control ]; then
        attempt fork_bomb 30 py spawn "$VERIFY_TASKS"
    else
        attempt fork_bomb 30 py fork_bomb "$VERIFY_TASKS"
    fi
    # Last: when the memory limit holds, the sandbox ends the whole run (OOMPolicy=stop).
    emit memory_bomb started "allocating more than $((VERIFY_MEMORY / 1048576)) MiB"
    attempt memory_bomb 30 py memory "$VERIFY_MEMORY"
    emit "done" "done" "all attempts ran"
}

# As root after the run: did the persistence attempts' files outlive it? The run's own /tmp and
# workspace are gone by now; anything found is in the guest for good.
survived() {
    local tok=$1 name=$2 marker=$3 found
    shift 3
    found=$(find "$@" -xdev -name "vmsbx-verify-$tok-$marker" 2>/dev/null | head -n 3 | paste -sd ' ')
    if [ -n "$found" ]; then emit "$name" ok "still there after the run: $found"
    else emit "$name" fail "nothing left in the guest after the run"; fi
    if [ "${VERIFY_CLEAN:-0}" = 1 ]; then find "$@" -xdev -name "vmsbx-verify-$tok-$marker" -delete 2>/dev/null; fi
}

aftermath() {
    local tok=$1 units
    survived "$tok" etc_write verify /etc
    survived "$tok" usr_local_write verify /usr/local
    survived "$tok" var_tmp_persist persist /var/tmp /tmp
    survived "$tok" home_dotfile dotfile /root /home
    survived "$tok" cron_job cron /etc/cron.d /var/spool/cron
    survived "$tok" systemd_user_unit unit /root /home /etc/systemd
    survived "$tok" git_hooks hook /usr/share/git-core /root /home
    units=$(journalctl --no-pager -q -o json "MESSAGE=vmsbx-verify-$tok-journal" 2>/dev/null | python3 -c \
        'import json, sys; print(" ".join(sorted({json.loads(l).get("_SYSTEMD_UNIT", "-") for l in sys.stdin})))')
    if [ "$tok" = "${VERIFY_CONTROL_TOKEN:-}" ]; then
        # The control shows that the socket takes messages at all.
        if [ -n "$units" ]; then emit journal_forge ok "arrived (from ${units})"
        else emit journal_forge fail "the message never arrived"; fi
    elif [[ " $units " == *" ssh.service "* ]]; then
        emit journal_forge ok "journald believed the forged unit: $units"
    else
        emit journal_forge fail "journald set the trusted fields itself: ${units:-nothing arrived}"
    fi
}

# `timeout` runs each attempt in a child bash: it must know these functions.
export -f canary emit py leave writable readable listable host_mounts gateways host_gateway host_listener \
    other_workspaces vmsbx_state guest_ssh_keys setuid_bit mount_tmpfs kernel_module proc_sys_write \
    raw_device su_root cron_job git_hooks journal_forge ipv6_loopback proxy_bypass fill fill_tmp \
    secret_env secret_argv secret_files secret_journal

case "${1:-}" in
    run) run_all ;;
    aftermath) aftermath "$2" ;;
    *) echo "usage: attempts.sh run | aftermath TOKEN" >&2; exit 2 ;;
esac
