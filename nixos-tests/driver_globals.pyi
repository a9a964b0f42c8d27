"""The names a scenario's test script finds already defined when the driver runs it.

The NixOS test driver defines `start_all`, `subtest`, ... and one variable per node, a
QemuMachine (nixos-tests/driver/test_driver: a stub faithful to the driver's source);
nixos-tests/lib.nix defines the parameters (read from the nodes' configuration) before the body.
The scenario files import them from here in their lint header, which lib.nix drops, so that ruff
and an editor know them. tests/test_vm_tests.py checks each scenario's script as the driver build
does (nixos-tests/driver/README.md); every parameter a scenario passes must be declared here with
its type.
"""

from collections.abc import Callable
from contextlib import AbstractContextManager

from test_driver.machine import QemuMachine

# ---- the test driver
Machine = QemuMachine
start_all: Callable[[], None]
subtest: Callable[[str], AbstractContextManager[None]]

# ---- nodes (the `nodes` of every scenario)
api1: Machine
api2: Machine
app1: Machine
client: Machine
db1: Machine
db2: Machine
db3: Machine
fe1: Machine
fe2: Machine
lemmy1: Machine
media1: Machine
media2: Machine
s3: Machine
store1: Machine
store2: Machine
store3: Machine

# ---- parameters set by lib.nix `script { params = ...; }`
DOMAIN: str
SITE_NAME: str
ADMIN_USER: str
ADMIN_PASSWORD_FILE: str
DB_PASSWORD_FILE: str
SECRET_FILES: list[str]
RUNTIME_CONFIG: str
STORE_PATHS: str
LEMMY1: str
API1: str
API2: str
APP1: str
DB1: str
DB2: str
MEDIA1: str
MEDIA2: str
FE1: str
FE2: str
BACKEND_PORT: int
UI_PORT: int
PICTRS_PORT: int
PICTRS_PROXY_PORT: int
PICTRS_DB: str
S3_BUCKET: str
PG_PORT: int
PROMOTED_SYSTEM: str
STORE1: str
STORE2: str
STORE3: str
S3_PROXY_PORT: int
GARAGE_S3_PORT: int
GARAGE_RPC_PORT: int
GARAGE_ADMIN_PORT: int
GARAGE_BUCKET: str
GARAGE_ACCESS_KEY_FILE: str
GARAGE_META_DIR: str
NODE_IDS: dict[str, str]
NODE_ZONES: dict[str, str]
PATRONI_APIS: dict[str, str]
LEMMY_DB: str
ETCD_CLIENT_URLS: dict[str, str]
ETCD_MEMBERS: list[str]
PATRONI_TTL: int
MESH_INTERFACE: str
MESH_PORT: int
MESH_ADDRESSES: dict[str, str]
UNDERLAY_ADDRESSES: dict[str, str]
MESH_PEERS: dict[str, str]
# backup: the PostgreSQL data directory, the pgBackRest stanza and the posix repository folder
DATA_DIR: str
STANZA: str
REPOSITORY: str
