#!/usr/bin/env bash
# Makes a test certificate authority and the certificates of a raftcache cluster, with openssl,
# into DIR (created if needed; files already there are kept, so running it again adds what is
# missing):
#   ca.pem, ca-key.pem            the CA (10 years), for --tls-ca, --peer-tls-ca and clients
#   node-N.pem, node-N-key.pem    node N's certificate (N = 1..NODES): the DNS names
#                                 node-N.raftcache (what peers check), localhost and NAMES, and
#                                 the IP 127.0.0.1, good for servers and clients; use it for
#                                 both --tls-cert and --peer-tls-cert
#   client.pem, client-key.pem    a client certificate (CN=client), for --client-auth cert
#
#   cluster/make-certs.sh DIR                  # 3 nodes
#   NODES=5 NAMES="cache.example.com,10.0.0.7" cluster/make-certs.sh DIR
#
# For tests and trials: a real deployment's certificates come from its own CA, with the same
# names (node-N.raftcache on each node's certificate).
set -euo pipefail

dir=${1:?usage: cluster/make-certs.sh DIR}
nodes=${NODES:-3}
names=${NAMES:-}
days=${DAYS:-3650}
mkdir -p "$dir"
cd "$dir"

if [ ! -f ca.pem ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$days" \
    -subj "/CN=raftcache test CA" -keyout ca-key.pem -out ca.pem \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    2>/dev/null
fi

# issue NAME CN SAN: NAME.pem and NAME-key.pem, signed by the CA.
issue() {
  [ -f "$1.pem" ] && return 0
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$2" \
    -keyout "$1-key.pem" -out "$1.csr" 2>/dev/null
  printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature" \
    "extendedKeyUsage=serverAuth,clientAuth" "subjectAltName=$3" >"$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days "$days" \
    -extfile "$1.ext" -out "$1.pem" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}

extra=""
IFS=, read -ra listed <<<"$names"
for name in "${listed[@]}"; do
  [ -n "$name" ] || continue
  if [[ "$name" =~ ^[0-9.]+$ || "$name" == *:* ]]; then extra+=",IP:$name"; else extra+=",DNS:$name"; fi
done
for id in $(seq 1 "$nodes"); do
  issue "node-$id" "node-$id.raftcache" "DNS:node-$id.raftcache,DNS:localhost,IP:127.0.0.1$extra"
done
issue client client "DNS:client"
echo "make-certs: CA and certificates for $nodes nodes and a client in $(pwd)"
