#!/usr/bin/env bash
# Makes a private CA and a server certificate for 127.0.0.1 / localhost,
# for trying the TLS listener of mosquitto-tls.conf (and for the tests).
# No passwords on the keys: this is for a test or a first setup, not for a
# production CA.
#
#   examples/tls/make-certs.sh DIR [DAYS]
#
# Writes into DIR: ca.crt ca.key server.crt server.key (keys mode 600).
# Clients trust ca.crt: mosquitto_sub --cafile DIR/ca.crt ...,
# paho: client.tls_set(ca_certs="DIR/ca.crt").
set -euo pipefail
dir=${1:?usage: make-certs.sh DIR [DAYS]}
days=${2:-365}
mkdir -p "$dir"
cd "$dir"
umask 077

openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days "$days" \
  -keyout ca.key -out ca.crt -subj "/CN=mosquitto-im test CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

openssl req -newkey rsa:2048 -nodes -sha256 -keyout server.key -out server.csr \
  -subj "/CN=localhost" 2>/dev/null
cat > server.ext <<EXT
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost
EXT
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
  -days "$days" -sha256 -extfile server.ext -out server.crt 2>/dev/null
rm -f server.csr server.ext ca.srl
chmod 644 ca.crt server.crt
chmod 600 ca.key server.key
echo "make-certs: wrote $(pwd)/{ca.crt,ca.key,server.crt,server.key}"
