# lemmy-cluster: the PostgreSQL package of each supported major version (nixpkgs' attributes).
pkgs: {
  "14" = pkgs.postgresql_14;
  "15" = pkgs.postgresql_15;
  "16" = pkgs.postgresql_16;
  "17" = pkgs.postgresql_17;
  "18" = pkgs.postgresql_18;
}
