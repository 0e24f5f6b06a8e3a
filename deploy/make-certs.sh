#!/bin/sh
# A private certificate authority and a TLS certificate for the team's MLflow server behind
# nginx (deploy/nginx-mlflow.conf).
#
#   deploy/make-certs.sh FOLDER [HOST_NAME_OR_IP...]
#
# Writes into FOLDER:
#   ca.crt                  give it to every member: MLFLOW_TRACKING_SERVER_CERT_PATH=.../ca.crt
#   ca.key                  signs server certificates; keep it off the server
#   server.crt, server.key  nginx's ssl_certificate and ssl_certificate_key
# The certificate is valid for localhost, 127.0.0.1 and every name given; clients check the
# host name in their MLFLOW_TRACKING_URI against that list. CERT_DAYS sets the validity
# (default 825 days).
set -eu

if [ $# -lt 1 ]; then
    echo "usage: $0 FOLDER [HOST_NAME_OR_IP...]" >&2
    exit 2
fi
folder=$1
shift
days=${CERT_DAYS:-825}

names="DNS:localhost,IP:127.0.0.1"
for name in "$@"; do
    # An IPv4 address is digits and dots, an IPv6 one has colons; anything else is a DNS name.
    if printf '%s' "$name" | grep -Eq '^[0-9.]+$|:'; then kind=IP; else kind=DNS; fi
    names="$names,$kind:$name"
done

mkdir -p "$folder"
umask 077 # the private keys (unencrypted: nginx reads them unattended) are for their owner only
openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$days" \
    -subj "/CN=fashion-mlp team CA" -keyout "$folder/ca.key" -out "$folder/ca.crt" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign"
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=${1:-localhost}" -keyout "$folder/server.key" -out "$folder/server.csr"
openssl x509 -req -in "$folder/server.csr" -CA "$folder/ca.crt" -CAkey "$folder/ca.key" \
    -days "$days" -out "$folder/server.crt" -extfile /dev/stdin <<EXTENSIONS
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid,issuer
subjectAltName = $names
EXTENSIONS
rm "$folder/server.csr"
chmod 644 "$folder/ca.crt" "$folder/server.crt"
echo "wrote $folder/ca.crt (for members) and $folder/server.crt, $folder/server.key (for nginx)"
