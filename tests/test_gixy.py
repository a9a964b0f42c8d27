"""gixy over every nginx configuration the role modules produce, as nixpkgs' build runs it.

nixpkgs writes nginx.conf with `pkgs.writers.writeNginxConfig` (services.nginx.validateConfigFile,
on by default), which runs gixy on the file, includes and all, and fails the machine's build on
any finding. nixpkgs' gixy is 0.1.21 (pkgs/by-name/gi/gixy/package.nix, with pyparsing 2.4.7), the
version in the test extra. The configurations are the ones the live tests run on real nginx
(tests/live/frontend.py renders them as the modules configure nginx, including the modules' own
files by absolute path), for every machine of the example and golden clusters: each frontend in
the cluster's TLS mode and in the others, each backend's pict-rs balancer, each pict-rs machine's
S3 balancer.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from synth.model import Cluster, load
from synth.topology import PICTRS_S3_PROXY_PORT, plan
from tests.conftest import EXAMPLES, ROOT, require
from tests.live.frontend import FrontendPaths, render_balancer_conf, render_nginx_conf


def gixy() -> str:
    """gixy beside this interpreter (the venv's, from the test extra) or on PATH (the flake's
    synth-tests check gets nixpkgs' pkgs.gixy)."""
    beside = Path(sys.executable).parent / "gixy"
    found = str(beside) if beside.exists() else shutil.which("gixy")
    require(found is not None, "gixy is not installed (the test extra has it: make setup)")
    assert found is not None
    return found


MODULES = ROOT / "modules"
CLUSTERS = [
    EXAMPLES / "single.toml",
    EXAMPLES / "small.toml",
    EXAMPLES / "large.toml",
    ROOT / "tests" / "golden" / "storage.toml",
]


@dataclass(frozen=True)
class Conf:
    name: str  # cluster/machine/what
    render: Callable[[FrontendPaths], str]


def frontend_confs(c: Cluster, cluster: str) -> list[Conf]:
    out = []
    for machine, hp in plan(c).items():
        if hp.frontend is None:
            continue
        for tls in sorted({c.cluster.tls, "none", "manual", "acme"}):

            def render(paths: FrontendPaths, hp=hp, tls=tls) -> str:
                cert = key = None
                if tls != "none":
                    cert, key = paths.root / "cert.pem", paths.root / "key.pem"
                return render_nginx_conf(
                    hp.frontend, c.cluster.domain, hp.private_address, paths, tls=tls, certificate=cert, key=key
                )

            out.append(Conf(f"{cluster}/{machine}/frontend tls={tls}", render))
    return out


def balancer_confs(c: Cluster, cluster: str) -> list[Conf]:
    out = []
    for machine, hp in plan(c).items():
        if hp.backend is not None and hp.backend.pictrs_upstreams:
            upstreams = hp.backend.pictrs_upstreams

            def backend(paths: FrontendPaths, upstreams=upstreams) -> str:
                return render_balancer_conf(
                    paths,
                    upstream="lemmy_pictrs",
                    servers=upstreams,
                    upstream_extra="zone lemmy_pictrs 64k;",
                    listen="127.0.0.1:8079",
                    server_name="lemmy-cluster-pictrs",
                    include=MODULES / "backend" / "pictrs-balancer.conf",
                )

            out.append(Conf(f"{cluster}/{machine}/pict-rs balancer", backend))
        if hp.pictrs is not None and hp.pictrs.s3_upstreams:
            s3 = hp.pictrs.s3_upstreams

            def pictrs(paths: FrontendPaths, s3=s3) -> str:
                return render_balancer_conf(
                    paths,
                    upstream="lemmy_garage_s3",
                    servers=s3,
                    upstream_extra="zone lemmy_garage_s3 64k;\nkeepalive 16;\nkeepalive_timeout 4s;",
                    listen=f"127.0.0.1:{PICTRS_S3_PROXY_PORT}",
                    server_name="lemmy-cluster-s3",
                    include=MODULES / "pictrs" / "s3-balancer.conf",
                )

            out.append(Conf(f"{cluster}/{machine}/S3 balancer", pictrs))
    return out


def all_confs() -> list[Conf]:
    out = []
    for toml in CLUSTERS:
        c = load(toml)
        out += frontend_confs(c, toml.stem) + balancer_confs(c, toml.stem)
    return out


CONFS = all_confs()


def test_every_kind_of_configuration_is_checked() -> None:
    kinds = {conf.name.split("/", 2)[2].split(" tls=")[0] for conf in CONFS}
    assert kinds == {"frontend", "pict-rs balancer", "S3 balancer"}, kinds


@pytest.mark.parametrize("conf", CONFS, ids=lambda conf: conf.name)
def test_gixy_finds_nothing(conf: Conf, tmp_path: Path) -> None:
    paths = FrontendPaths(tmp_path / "nginx").create()
    paths.conf.write_text(conf.render(paths))
    out = subprocess.run([gixy(), str(paths.conf)], capture_output=True, text=True, check=False)
    assert out.returncode == 0, f"gixy 0.1.21 fails the build of nginx.conf ({conf.name}):\n{out.stdout}{out.stderr}"


def test_gixy_reads_the_included_module_files(tmp_path: Path) -> None:
    """gixy follows the conf's includes into the modules' files: a Host header it must flag, in an
    included file, is found."""
    include = tmp_path / "bad.conf"
    include.write_text(
        "location / {\n    proxy_pass http://lemmy_garage_s3;\n    proxy_set_header Host $http_host;\n}\n"
    )
    paths = FrontendPaths(tmp_path / "nginx").create()
    conf = render_balancer_conf(
        paths,
        upstream="lemmy_garage_s3",
        servers=["10.0.0.1:3900"],
        upstream_extra="",
        listen="127.0.0.1:3909",
        server_name="x",
        include=include,
    )
    paths.conf.write_text(conf)
    out = subprocess.run([gixy(), str(paths.conf)], capture_output=True, text=True, check=False)
    assert out.returncode != 0 and "host_spoofing" in out.stdout, out.stdout
