"""No package that nixpkgs marks insecure or has removed.

nixpkgs refuses to evaluate a package with `meta.knownVulnerabilities` (unless the user allows it
by name), and a removed package is an alias that throws: either stops `nix flake check` (a VM test
that does not evaluate, a machine that does not build). Neither can be seen here without
nixpkgs, so the packages this project must not use are listed below, each with where nixpkgs says
so, and every Nix file of the project (modules, generated hosts, VM tests, the flake) is searched
for them: as `pkgs.<name>`, and as the NixOS service whose default package it is.

When nixpkgs marks or removes another package this project could reach for, add it here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from synth.model import POSTGRES_VERSIONS
from tests.conftest import ROOT

# Swarsel/nixpkgs at 4aa6836a648ca76c68866decf0c8965e36ec2a3b (master, July 2026, the 26.11
# cycle: what nixos-26.05 branched from, plus two months).
NIXPKGS = "Swarsel/nixpkgs@4aa6836a"


@dataclass(frozen=True)
class Refused:
    package: str  # the attribute under pkgs
    why: str  # "insecure" or "removed"
    source: str  # where nixpkgs says so
    services: tuple[str, ...] = ()  # NixOS services whose default package it is
    instead: str = ""


REFUSED = [
    Refused(
        "minio",
        "insecure",
        f"{NIXPKGS} pkgs/by-name/mi/minio/package.nix: meta.knownVulnerabilities (CVE-2026-40344, "
        "CVE-2026-41145, ... and 'minio has been abandoned by upstream and security issues won't be fixed')",
        services=("minio",),
        instead="Garage (services.garage, this project's storage module)",
    ),
    Refused(
        "minio-client",
        "abandoned",
        f"{NIXPKGS} pkgs/by-name/mi/minio-client/package.nix: MinIO's own client (github.com/minio/mc), "
        "abandoned with MinIO; not marked yet",
        instead="rclone (the S3 client nixpkgs' MinIO notice names)",
    ),
    *[
        Refused(
            name,
            "removed",
            f"{NIXPKGS} pkgs/top-level/aliases.nix: '{name} has been removed since it reached its EOL upstream' "
            "(added 2025-11-17)",
            instead="postgresql_14 .. postgresql_18",
        )
        for name in ("postgresql_13", "postgresql_13_jit", "postgresql13Packages")
    ],
    *[
        Refused(
            name,
            "removed",
            f"{NIXPKGS} pkgs/top-level/aliases.nix: '{name}' has been removed as it is unmaintained upstream",
            instead="garage_2",
        )
        for name in ("garage_0_8", "garage_0_8_7", "garage_0_9", "garage_0_9_4")
    ],
]


def nix_files() -> list[Path]:
    skip = {".venv", ".git", "build"}
    return sorted(p for p in ROOT.rglob("*.nix") if not skip & set(p.relative_to(ROOT).parts))


def uses(text: str, refused: Refused) -> list[str]:
    found = []
    # pkgs.minio, but not pkgs.minio-client or pkgs.minio_x (Nix identifiers take - and _ and ')
    if re.search(rf"\bpkgs\.{re.escape(refused.package)}(?![\w'-])", text):
        found.append(f"pkgs.{refused.package}")
    for service in refused.services:
        if re.search(rf"\bservices\.{re.escape(service)}(?![\w'-])", text):
            found.append(f"services.{service}")
    return found


@pytest.mark.parametrize("refused", REFUSED, ids=lambda r: r.package)
def test_no_nix_file_uses_a_refused_package(refused: Refused) -> None:
    offenders = []
    for path in nix_files():
        for what in uses(path.read_text(), refused):
            offenders.append(f"{path.relative_to(ROOT)}: {what}")
    assert not offenders, (
        f"nixpkgs {'marks' if refused.why == 'insecure' else 'has'} {refused.package} {refused.why} "
        f"({refused.source}); use {refused.instead}:\n" + "\n".join(offenders)
    )


def test_the_search_finds_what_it_looks_for() -> None:
    minio = REFUSED[0]
    assert uses("services.minio = { enable = true; };", minio) == ["services.minio"]
    assert uses("exec ${pkgs.minio}/bin/minio", minio) == ["pkgs.minio"]
    assert uses("exec ${pkgs.minio-client}/bin/mc", minio) == []
    assert uses("services.minio-exporter", minio) == []


def test_synth_offers_no_removed_postgresql() -> None:
    """The PostgreSQL majors that cluster.toml may name have packages in nixpkgs."""
    removed = {r.package for r in REFUSED if r.why == "removed"}
    assert not [v for v in POSTGRES_VERSIONS if f"postgresql_{v}" in removed]
