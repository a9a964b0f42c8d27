#!/usr/bin/env python3
"""A FAKE `garage` command for the tests of modules/storage/scripts/garage-setup.sh.

This is NOT Garage. It is a small stand-in for the command line of Garage 2.0, covering only the
commands that garage-setup.sh runs, so that the script can be tested without a Garage cluster. The
outputs that the script parses are reproduced from Garage v2.0.0's source
(src/garage/cli/remote/cluster.rs: `garage status`; src/garage/cli/remote/layout.rs:
`garage layout show`; src/format-table: the tables, whose columns are padded to their widest cell
plus two spaces; bytesize 1.3's decimal sizes such as "500.0 GB"); error messages follow Garage's
"Error: <request> returned <code> (<http status>): <message>" on stderr with exit status 1.

State: a JSON file named by the environment variable FAKE_GARAGE_STATE (see `new_state`):

    {"replication_factor": 3,
     "status_fails": false,            # true: `garage status` fails as when Garage is not up
     "nodes": {"<64 hex id>": {"hostname": "s1", "addr": "10.0.0.1:3901", "connected": true}},
     "layout": {"version": 0,
                "roles": {"<id>": {"zone": "z1", "capacity": 500000000000}},   # applied
                "staged": {"<id>": {"zone": "z1", "capacity": 500000000000}}}, # not applied
     "keys": {"GK...": {"secret": "...", "name": "pictrs"}},
     "buckets": {"pictrs": {"keys": {"GK...": {"read": true, "write": true, "owner": true}}}}}

Tests change "connected" or "status_fails" between (or during) runs; the fake writes the file
only for commands that change the cluster, by an atomic rename.

Log: every invocation appends one JSON line {"argv": [...]} to the file named by FAKE_GARAGE_LOG,
with "stdin" added for `json-api` (the only command that reads its standard input).

Simplifications: a node that was connected once, has no role and is down is left out of
`garage status` (Garage 2.0.0 reaches an `unreachable!()` there); usable capacity in
`garage layout show` is the full capacity; nodes are found by their full id or an unambiguous
prefix, keys and buckets by their exact id or name. Any other command or option exits with
status 2 and "fake garage: unsupported ...", so that an unexpected call fails the test.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from collections.abc import Collection
from pathlib import Path
from typing import Any

State = dict[str, Any]

GARAGE_VERSION = "v2.0.0"


class GarageError(Exception):
    """An error that Garage's CLI reports as "Error: ..." with exit status 1."""


class Unsupported(Exception):
    """A call that this fake does not model."""


def new_state(nodes: dict[str, dict[str, Any]] | None = None, replication_factor: int = 3) -> State:
    return {
        "replication_factor": replication_factor,
        "status_fails": False,
        "nodes": nodes or {},
        "layout": {"version": 0, "roles": {}, "staged": {}},
        "keys": {},
        "buckets": {},
    }


def load(path: Path) -> State:
    state: State = json.loads(path.read_text())
    return state


def save(path: Path, state: State) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
    os.replace(tmp, path)


# ---- formats from Garage's source ----


def format_table(rows: list[str]) -> str:
    """format_table::format_table_to_string: tab-separated cells, padded to the widest plus two."""
    cells = [row.split("\t") for row in rows]
    widths = [0] * max(len(r) for r in cells)
    for r in cells:
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(c))
    out = ""
    for r in cells:
        for c, w in zip(r[:-1], widths, strict=False):
            out += c + " " * (w - len(c) + 2)
        out += r[-1] + "\n"
    return out


def byte_size(n: int) -> str:
    """bytesize 1.3's ByteSize::to_string_as(false): decimal units, one decimal."""
    if n < 1000:
        return f"{n} B"
    exp = max(1, int(math.log(n) / math.log(1000)))
    return f"{n / 1000**exp:.1f} {'KMGTPE'[exp - 1]}B"


UNITS = {
    "": 1,
    "b": 1,
    **{p: 1000 ** (i + 1) for i, p in enumerate("kmgtpe")},
    **{p + "b": 1000 ** (i + 1) for i, p in enumerate("kmgtpe")},
    **{p + "i": 1024 ** (i + 1) for i, p in enumerate("kmgtpe")},
    **{p + "ib": 1024 ** (i + 1) for i, p in enumerate("kmgtpe")},
}


def parse_size(text: str) -> int:
    """bytesize 1.3's FromStr: a number and an optional unit, case-insensitive ("500G", "1 TiB")."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).lower() not in UNITS:
        raise GarageError(f"Invalid value for '--capacity <capacity>': couldn't parse {text!r}")
    return int(float(m.group(1)) * UNITS[m.group(2).lower()])


def capacity_string(capacity: int | None) -> str:
    return "gateway" if capacity is None else byte_size(capacity)


# ---- commands ----


def staging_lines(state: State) -> str:
    """print_staging_role_changes (layout.rs): printed by `garage status` and `garage layout show`."""
    staged = state["layout"]["staged"]
    if not staged:
        return ""
    table = ["ID\tTags\tZone\tCapacity"]
    for node_id, role in sorted(staged.items()):
        table.append(f"{node_id[:16]}\t[]\t{role['zone']}\t{capacity_string(role['capacity'])}")
    return "\n==== STAGED ROLE CHANGES ====\n" + format_table(table) + "\n"


def cmd_status(state: State) -> str:
    if state.get("status_fails"):
        # main.rs: the CLI cannot reach the local Garage (err_context puts the cause on a new line)
        raise GarageError(
            "Unable to connect to destination RPC host. Check that you are using the same value of "
            "rpc_secret as them, and that you have their correct full-length node ID (public key).\n"
            "Connection refused (os error 111)"
        )
    roles, staged = state["layout"]["roles"], state["layout"]["staged"]
    out = "==== HEALTHY NODES ====\n"
    healthy = ["ID\tHostname\tAddress\tTags\tZone\tCapacity\tDataAvail\tVersion"]
    failed = ["ID\tHostname\tTags\tZone\tCapacity\tLast seen"]
    for node_id, node in sorted(state["nodes"].items()):
        host = node.get("hostname", "?")
        role = roles.get(node_id)
        if node.get("connected"):
            addr = node.get("addr", "N/A")
            version = node.get("version", GARAGE_VERSION)
            if role:
                avail, total = node.get("disk", [450_000_000_000, 500_000_000_000])
                data_avail = f"{byte_size(avail)} ({avail / total * 100:.1f}%)"
                healthy.append(
                    f"{node_id[:16]}\t{host}\t{addr}\t[]\t{role['zone']}\t"
                    f"{capacity_string(role['capacity'])}\t{data_avail}\t{version}"
                )
            else:
                status = "pending..." if node_id in staged else "NO ROLE ASSIGNED"
                healthy.append(f"{node_id[:16]}\t{host}\t{addr}\t\t\t{status}\t\t{version}")
        elif role:
            failed.append(
                f"{node_id[:16]}\t{host}\t[]\t{role['zone']}\t{capacity_string(role['capacity'])}\t"
                f"{node.get('last_seen', 'never seen')}"
            )
        elif node_id in staged:
            failed.append(f"{node_id[:16]}\t{host}\t\t\tpending...\t{node.get('last_seen', 'never seen')}")
    out += format_table(healthy)
    if len(failed) > 1:
        out += "\n==== FAILED NODES ====\n" + format_table(failed)
    staging = staging_lines(state)
    if staging:
        out += staging + "\nPlease use `garage layout show` to check the proposed new layout and apply it.\n\n"
    return out


def cluster_layout(roles: dict[str, Any], empty: str) -> str:
    if not roles:
        return empty + "\n"
    table = ["ID\tTags\tZone\tCapacity\tUsable capacity"]
    for node_id, role in sorted(roles.items()):
        cap = capacity_string(role["capacity"])
        table.append(f"{node_id[:16]}\t[]\t{role['zone']}\t{cap}\t{cap} (100.0%)")
    return format_table(table) + "\nZone redundancy: maximum\n"


def cmd_layout_show(state: State) -> str:
    layout = state["layout"]
    out = "==== CURRENT CLUSTER LAYOUT ====\n"
    out += cluster_layout(
        layout["roles"],
        "No nodes currently have a role in the cluster.\nSee `garage status` to view available nodes.",
    )
    out += f"\nCurrent cluster layout version: {layout['version']}\n"
    staging = staging_lines(state)
    if staging:
        out += staging
        out += "\n==== NEW CLUSTER LAYOUT AFTER APPLYING CHANGES ====\n"
        out += cluster_layout({**layout["roles"], **layout["staged"]}, "No nodes have a role in the new layout.")
        out += "\nTo enact the staged role changes, type:\n\n"
        out += f"    garage layout apply --version {layout['version'] + 1}\n\n"
        out += "You can also revert all proposed changes with: garage layout revert\n"
    return out


def find_node(state: State, pattern: str) -> str:
    """find_matching_node (layout.rs): known nodes and nodes with a role, by id prefix."""
    known = {i for i, n in state["nodes"].items() if n.get("connected")} | set(state["layout"]["roles"])
    candidates = sorted(i for i in known if i.startswith(pattern))
    if len(candidates) != 1:
        raise GarageError(f"{len(candidates)} nodes match '{pattern}'")
    return candidates[0]


def options(args: list[str], flags: dict[str, str], switches: Collection[str] = ()) -> tuple[dict[str, Any], list[str]]:
    """Split ARGS into {name: value} for FLAGS (option -> name), True for SWITCHES, and positionals."""
    opts: dict[str, Any] = {}
    rest: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a in flags and i + 1 < len(args):
            opts[flags[a]] = args[i + 1]
            i += 2
        elif a in switches:
            opts[a.lstrip("-")] = True
            i += 1
        elif a.startswith("-") and a != "-":
            raise Unsupported(f"option {a}")
        else:
            rest.append(a)
            i += 1
    return opts, rest


def cmd_layout_assign(state: State, args: list[str]) -> str:
    opts, ids = options(args, {"-z": "zone", "--zone": "zone", "-c": "capacity", "--capacity": "capacity"})
    if not ids or "zone" not in opts or "capacity" not in opts:
        raise Unsupported("layout assign without -z ZONE -c CAPACITY NODE_ID")
    capacity = parse_size(opts["capacity"])
    found = [find_node(state, i) for i in ids]
    for node_id in found:
        state["layout"]["staged"][node_id] = {"zone": opts["zone"], "capacity": capacity}
    return (
        "Role changes are staged but not yet committed.\n"
        "Use `garage layout show` to view staged role changes,\n"
        "and `garage layout apply` to enact staged changes.\n"
    )


def cmd_layout_apply(state: State, args: list[str]) -> str:
    opts, rest = options(args, {"--version": "version"})
    if rest or "version" not in opts:
        raise Unsupported("layout apply without --version N")
    layout = state["layout"]
    if int(opts["version"]) != layout["version"] + 1:
        raise GarageError("ApplyClusterLayout returned InternalError (500): Invalid new layout version")
    roles = {**layout["roles"], **layout["staged"]}
    storage = [r for r in roles.values() if r["capacity"]]
    if len(storage) < state["replication_factor"]:
        raise GarageError(
            "ApplyClusterLayout returned InternalError (500): The number of nodes with positive "
            f"capacity ({len(storage)}) is smaller than the replication factor ({state['replication_factor']})."
        )
    layout.update(version=layout["version"] + 1, roles=roles, staged={})
    return (
        "New cluster layout with updated role assignment has been applied in cluster.\n"
        "Data will now be moved around between nodes accordingly.\n"
    )


def cmd_key_info(state: State, args: list[str]) -> str:
    _, rest = options(args, {})
    if len(rest) != 1:
        raise Unsupported("key info without exactly one key")
    matches = [k for k, v in state["keys"].items() if rest[0] in (k, v["name"])]
    if len(matches) != 1:
        raise GarageError(f"GetKeyInfo returned InvalidRequest (400): Bad request: {len(matches)} matching keys")
    key = state["keys"][matches[0]]
    return f"==== ACCESS KEY INFORMATION ====\nKey ID:              {matches[0]}\nKey name:            {key['name']}\n"


def is_hex(text: str) -> bool:
    return re.fullmatch(r"(?:[0-9a-fA-F]{2})*", text) is not None


def cmd_import_key(state: State, payload: Any) -> str:
    """`garage json-api ImportKey`: ImportKeyRequest (src/api/admin/key.rs) and Key::import."""
    if not isinstance(payload, dict) or not {"accessKeyId", "secretAccessKey"} <= payload.keys():
        raise GarageError("missing field `accessKeyId` or `secretAccessKey`")
    key_id, secret, name = payload["accessKeyId"], payload["secretAccessKey"], payload.get("name")
    if key_id in state["keys"]:
        raise GarageError(f"KeyAlreadyExists (409): Key {key_id} already exists in data store.")
    if not (len(key_id) == 26 and key_id.startswith("GK") and is_hex(key_id[2:])) or not (
        len(secret) == 64 and is_hex(secret)
    ):
        raise GarageError("InvalidRequest (400): Bad request: Invalid key format")
    state["keys"][key_id] = {"secret": secret, "name": name or "Imported key"}
    return json.dumps({"accessKeyId": key_id, "name": name or "Imported key"}, indent=2) + "\n"


def bucket_of(state: State, name: str) -> dict[str, Any]:
    if name not in state["buckets"]:
        raise GarageError(f"GetBucketInfo returned NoSuchBucket (404): Bucket not found: {name}")
    bucket: dict[str, Any] = state["buckets"][name]
    return bucket


def cmd_bucket(state: State, args: list[str]) -> tuple[str, bool]:
    """bucket info / create / allow / deny; returns the output and whether the state changed."""
    if not args:
        raise Unsupported("bucket without a subcommand")
    sub, args = args[0], args[1:]
    if sub in ("info", "create"):
        _, rest = options(args, {})
        if len(rest) != 1:
            raise Unsupported(f"bucket {sub} without exactly one name")
        name = rest[0]
        if sub == "info":
            bucket_of(state, name)
            return f"==== BUCKET INFORMATION ====\nGlobal alias:  {name}\n", False
        if name in state["buckets"]:
            raise GarageError("CreateBucket returned BucketAlreadyExists (409): Bucket already exists")
        state["buckets"][name] = {"keys": {}}
        return f"==== BUCKET INFORMATION ====\nGlobal alias:  {name}\n", True
    if sub in ("allow", "deny"):
        # PermBucketOpt (structs.rs) for both; cmd_bucket_allow / cmd_bucket_deny (remote/bucket.rs)
        # send AllowBucketKey / DenyBucketKey, which turn on / off only the flags given.
        opts, rest = options(args, {"--key": "key"}, {"--read", "--write", "--owner"})
        if len(rest) != 1 or "key" not in opts:
            raise Unsupported(f"bucket {sub} without a bucket and --key")
        bucket = bucket_of(state, rest[0])
        matches = [k for k, v in state["keys"].items() if opts["key"] in (k, v["name"])]
        if len(matches) != 1:
            raise GarageError(f"GetKeyInfo returned InvalidRequest (400): Bad request: {len(matches)} matching keys")
        perms = bucket["keys"].setdefault(matches[0], {"read": False, "write": False, "owner": False})
        for p in ("read", "write", "owner"):
            if opts.get(p):
                perms[p] = sub == "allow"
        return f"New permissions for key {matches[0]} on bucket {rest[0]}:\n", True
    raise Unsupported(f"bucket {sub}")


def run(argv: list[str], state_file: Path, log: dict[str, Any]) -> str:
    """Run one command; the output for stdout. Raises GarageError or Unsupported."""
    state = load(state_file)
    changed = False
    match argv:
        case ["status"]:
            out = cmd_status(state)
        case ["layout", "show"]:
            out = cmd_layout_show(state)
        case ["layout", "assign", *args]:
            out, changed = cmd_layout_assign(state, args), True
        case ["layout", "apply", *args]:
            out, changed = cmd_layout_apply(state, args), True
        case ["key", "info", *args]:
            out = cmd_key_info(state, args)
        case ["json-api", "ImportKey", payload]:
            text = sys.stdin.read() if payload == "-" else payload
            if payload == "-":
                log["stdin"] = text
            try:
                data = json.loads(text)
            except ValueError as e:
                raise GarageError(f"{e}") from None
            out, changed = cmd_import_key(state, data), True
        case ["bucket", *args]:
            out, changed = cmd_bucket(state, args)
        case _:
            raise Unsupported("command: " + " ".join(argv))
    if changed:
        save(state_file, state)
    return out


def main() -> int:
    argv = sys.argv[1:]
    entry: dict[str, Any] = {"argv": argv}
    if "GARAGE_RPC_SECRET_FILE" in os.environ:  # the CLI's way to get the RPC secret from a file
        entry["rpc_secret_file"] = os.environ["GARAGE_RPC_SECRET_FILE"]
    try:
        out = run(argv, Path(os.environ["FAKE_GARAGE_STATE"]), entry)
        code = 0
    except GarageError as e:
        out, code = "", 1
        sys.stderr.write(f"Error: {e}\n")
    except Unsupported as e:
        out, code = "", 2
        sys.stderr.write(f"fake garage: unsupported {e}\n")
    entry["exit"] = code
    with open(os.environ["FAKE_GARAGE_LOG"], "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")
    sys.stdout.write(out)
    return code


if __name__ == "__main__":
    sys.exit(main())
