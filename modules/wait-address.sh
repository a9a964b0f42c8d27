#!/bin/sh
# lemmy-cluster-private-address.service: wait until ADDRESS is assigned to an interface (an IPv6
# one past duplicate address detection: not tentative), at most TIMEOUT seconds; exit 1 after that.
# Usage: wait-address.sh ADDRESS TIMEOUT. Needs ip (iproute2), date, sleep.
set -u
address=$1 timeout=$2
deadline=$(($(date +%s) + timeout))
while [ -z "$(ip -o addr show to "$address" -tentative)" ]; do
  if [ "$(date +%s)" -ge "$deadline" ]; then
    echo "lemmy-cluster: $address (services.lemmy-cluster.privateAddress) is not assigned to any interface after $timeout s; the services that bind it do not start" >&2
    exit 1
  fi
  sleep 0.5
done
echo "lemmy-cluster: $address is assigned"
