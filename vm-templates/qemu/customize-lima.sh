#!/bin/sh
# mmdebstrap customize hook of the Lima variant, run after customize.sh on the same tree ("$1").
# Lima hands a guest its user, SSH key and boot scripts on a NoCloud "cidata" disk, read by
# cloud-init; everything else cloud-init could do is turned off here.
set -eu
root="$1"

mkdir -p "$root/etc/cloud/cloud.cfg.d" "$root/etc/vmsbx"
cat > "$root/etc/cloud/cloud.cfg.d/90-vmsbx.cfg" <<'CFG'
# vmsbx (Lima variant): only Lima's cidata disk is a data source. No metadata service is ever
# probed over the network, and without a cidata disk cloud-init does nothing.
datasource_list: [NoCloud]
# Keys: cloud-init makes a throwaway ed25519 host key on first boot (sshd needs one to start);
# vmsbx's provision script replaces it with the key vmsbx generated and pinned.
ssh_deletekeys: true
ssh_genkeytypes: [ed25519]
ssh_pwauth: false
# The image's APT sources stay as built; nothing is fetched or upgraded on boot.
apt:
  preserve_sources_list: true
package_update: false
package_upgrade: false
# The image has no locales package (update-locale would fail the config stage); cc_locale skips
# itself for a "false" string (the schema allows strings only).
locale: "false"
CFG

# The QEMU provider's fw_cfg key loader has nothing to load under Lima: vmsbx's provision
# script (run by Lima's boot script) installs the keys instead.
printf 'Keys come from Lima provisioning (cloud-init), not from QEMU fw_cfg.\n' \
  > "$root/etc/vmsbx/keys-from-cloud-init"
