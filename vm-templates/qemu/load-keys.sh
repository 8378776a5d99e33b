#!/bin/sh
# Installs the SSH host key and the authorized client key that vmsbx passed with QEMU -fw_cfg.
# Runs before ssh.service on every boot; refuses (and so keeps sshd keyless) if an item is missing.
set -eu
modprobe qemu_fw_cfg
base=/sys/firmware/qemu_fw_cfg/by_name/opt/vmsbx
for item in ssh_host_ed25519_key ssh_host_ed25519_key.pub authorized_keys; do
  if [ ! -r "$base/$item/raw" ]; then
    echo "vmsbx-keys: fw_cfg item $item is missing" >&2
    exit 1
  fi
done
umask 077
cat "$base/ssh_host_ed25519_key/raw" > /etc/ssh/ssh_host_ed25519_key
umask 022
cat "$base/ssh_host_ed25519_key.pub/raw" > /etc/ssh/ssh_host_ed25519_key.pub
install -d -m 0700 /root/.ssh
umask 077
cat "$base/authorized_keys/raw" > /root/.ssh/authorized_keys
