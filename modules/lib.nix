# lemmy-cluster: small helpers shared by the role modules (addresses may be IPv4 or IPv6).
{ lib }:
let
  isIPv6 = lib.hasInfix ":";
in
{
  inherit isIPv6;

  # "10.0.0.1:80", "[2001:db8::1]:80"
  hostPort = addr: port: if isIPv6 addr then "[${addr}]:${toString port}" else "${addr}:${toString port}";

  # A single address as a pg_hba / firewall network: "10.0.0.1/32", "2001:db8::1/128"
  cidr = addr: if isIPv6 addr then "${addr}/128" else "${addr}/32";
}
