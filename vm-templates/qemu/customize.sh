#!/bin/sh
# mmdebstrap customize hook: turns the bootstrapped tree ("$1") into a vmsbx guest.
# It runs on the host as root with the tree not yet packed; nothing here may depend on the host.
set -eu
root="$1"

# No host keys in the shared image: each VM gets its own before first boot (fw_cfg, cloud-init).
rm -f "$root"/etc/ssh/ssh_host_*

# Each VM makes its own machine id on first boot.
: > "$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"

echo vmsbx > "$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 vmsbx\n::1 localhost ip6-localhost ip6-loopback\n' > "$root/etc/hosts"
# x-systemd.growfs: the overlay may be larger than the image; grow the filesystem to fit.
echo '/dev/vda / ext4 defaults,errors=remount-ro,x-systemd.growfs 0 1' > "$root/etc/fstab"

# Locked root password: key-only SSH is the one way in.
chroot "$root" passwd -l root >/dev/null

# DHCP on the virtio NIC through systemd-networkd (already in the systemd package).
mkdir -p "$root/etc/systemd/network"
cat > "$root/etc/systemd/network/20-vmsbx.network" <<'NET'
[Match]
Name=en* eth*

[Network]
DHCP=ipv4
NET
chroot "$root" systemctl enable systemd-networkd.service >/dev/null 2>&1

# sshd: keys only, the per-VM ed25519 host key only, no agent or X11 forwarding.
mkdir -p "$root/etc/ssh/sshd_config.d"
# The policy is vmsbx's one sshd-vmsbx.conf, shared with every provider (and hashed into the recipe).
{
  echo "HostKey /etc/ssh/ssh_host_ed25519_key"
  cat "$(dirname "$0")/sshd-vmsbx.conf"
} > "$root/etc/ssh/sshd_config.d/10-vmsbx.conf"

# Per-VM keys arrive through QEMU fw_cfg and are installed before sshd starts.
install -D -m 0755 "$(dirname "$0")/load-keys.sh" "$root/usr/local/lib/vmsbx/load-keys"
cat > "$root/etc/systemd/system/vmsbx-keys.service" <<'UNIT'
[Unit]
Description=Install this VM's SSH keys handed over by vmsbx
DefaultDependencies=no
After=local-fs.target
Before=ssh.service
ConditionPathExists=!/etc/vmsbx/keys-from-cloud-init

[Service]
Type=oneshot
ExecStart=/usr/local/lib/vmsbx/load-keys
RemainAfterExit=yes

[Install]
WantedBy=multi-user.target
UNIT
chroot "$root" systemctl enable vmsbx-keys.service >/dev/null 2>&1

# The serial console is a log, not a login: nobody types there.
chroot "$root" systemctl mask serial-getty@ttyS0.service >/dev/null 2>&1
# Nothing in the guest may fetch or upgrade on its own.
chroot "$root" systemctl mask apt-daily.timer apt-daily-upgrade.timer >/dev/null 2>&1 || true

# A bounded journal that survives reboots (run logs are pulled from it).
mkdir -p "$root/var/log/journal" "$root/etc/systemd/journald.conf.d"
printf '[Journal]\nStorage=persistent\nSystemMaxUse=512M\n' > "$root/etc/systemd/journald.conf.d/10-vmsbx.conf"

rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin
