#!/bin/sh
# The team's DVC remote: a folder on a host that members reach over SSH (Debian's
# openssh-server, already running there). Run on that host, as root:
#
#   deploy/dvc-remote.sh FOLDER ACCOUNT MEMBER_KEY.pub...
#
# Creates ACCOUNT (a system user with no password: keys only) if it does not exist, makes
# FOLDER its own and writable by nobody else, authorizes each member's public key for it, and
# prints what members run, with the host's key fingerprints to check against what their
# ssh-keyscan shows. Rerun it with a new member's key to add one.
set -eu

if [ $# -lt 3 ]; then
    echo "usage: $0 FOLDER ACCOUNT MEMBER_KEY.pub..." >&2
    exit 2
fi
folder=$1
account=$2
shift 2

if ! id "$account" >/dev/null 2>&1; then
    useradd --system --create-home --shell /bin/sh "$account"
    # No password to log in with, but not a locked account: sshd lets a locked one in by no
    # method at all, keys included.
    usermod -p '*' "$account"
fi
home=$(getent passwd "$account" | cut -d: -f6)
mkdir -p "$folder" "$home/.ssh"
chown "$account" "$folder" "$home/.ssh"
chmod 700 "$folder" "$home/.ssh"
keys="$home/.ssh/authorized_keys"
touch "$keys"
for key in "$@"; do
    grep -qxF "$(cat "$key")" "$keys" || cat "$key" >> "$keys"
done
chown "$account" "$keys"
chmod 600 "$keys"

host=$(hostname -f 2>/dev/null || hostname)
echo "DVC remote ready: ssh://$account@$host$folder"
echo "Host key fingerprints (members compare them with what ssh-keyscan shows):"
for public in /etc/ssh/ssh_host_*_key.pub; do ssh-keygen -lf "$public"; done
echo "Each member, in the project:"
echo "  ssh-keyscan $host >> ~/.ssh/known_hosts"
echo "  dvc remote add -d team ssh://$account@$host$folder   # once, committed"
echo "  dvc remote modify --local team keyfile ~/.ssh/id_ed25519"
