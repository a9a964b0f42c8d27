"""The certificates of pgBackRest's TLS connections between the postgres machines and the backup
machine (a repository host: cluster.toml's machine with role "backup").

pgBackRest's `server` command listens on each of these machines (port 8432) and accepts a client
only with a certificate signed by the cluster's backup CA whose common name it lists in
tls-server-auth: the postgres machines accept the backup machine (it takes the backups from the
primary), the backup machine accepts the postgres machines (archive-push, restore, info). Each
machine's certificate names the machine (common name) and its address, which is what a client
checks the server's certificate against (pgBackRest 2.45 compares the host it connects to with
the DNS names of the subject alternative names and the common name only, so the address is there
as a DNS name too, besides the IP address).

`synth secrets init` makes them in secrets/: the CA's key (backup-tls-ca-key: it stays here,
never pushed: it signs the certificates of machines added later), its certificate
(backup-tls-ca, on every machine of the backup) and per machine a key and certificate
(backup-tls-key.<machine>, backup-tls-cert.<machine>).
"""

from __future__ import annotations

import datetime
import ipaddress

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# The file of the CA's private key in secrets/ (not in topology.SECRET_FILES: no machine gets it).
CA_KEY_FILE = "backup-tls-ca-key"
# Certificates are valid this long; `synth verify` reports the days left (renewal: delete the
# machine's two files and run `synth secrets init` and `synth secrets push` again).
CA_DAYS = 20 * 365
CERT_DAYS = 10 * 365


class TlsFileError(Exception):
    """A kept file is not what it must be (the message says what and how to fix it)."""


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


def _key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def new_ca(cluster_name: str) -> tuple[bytes, bytes]:
    """(key PEM, certificate PEM) of a new backup CA for CLUSTER_NAME."""
    key = Ed25519PrivateKey.generate()
    name = _name(f"lemmy-cluster {cluster_name} backup CA")
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, None)
    )
    return _key_pem(key), cert.public_bytes(serialization.Encoding.PEM)


def _subject_names(address: str, machine: str) -> list[x509.GeneralName]:
    ip = ipaddress.ip_address(address)
    # The address as a DNS name too: pgBackRest 2.45 matches the host only against DNS names.
    return [x509.DNSName(machine), x509.DNSName(str(ip)), x509.IPAddress(ip)]


def new_machine_cert(ca_key_pem: bytes, ca_cert_pem: bytes, machine: str, address: str) -> tuple[bytes, bytes]:
    """(key PEM, certificate PEM) of MACHINE at ADDRESS, signed by the CA: server and client."""
    ca_key = serialization.load_pem_private_key(ca_key_pem, None)
    assert isinstance(ca_key, Ed25519PrivateKey)
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    key = Ed25519PrivateKey.generate()
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(machine))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(_subject_names(address, machine)), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, None)
    )
    return _key_pem(key), cert.public_bytes(serialization.Encoding.PEM)


def days_left(cert_pem: bytes) -> int:
    cert = x509.load_pem_x509_certificate(cert_pem)
    return (cert.not_valid_after_utc - _now()).days


def check_ca(key_pem: bytes, cert_pem: bytes) -> None:
    """TlsFileError unless KEY_PEM is the key of the CA certificate CERT_PEM."""
    try:
        key = serialization.load_pem_private_key(key_pem, None)
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise TlsFileError(f"cannot be read ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey) or key.public_key() != cert.public_key():
        raise TlsFileError("the CA's key and certificate do not belong together")


def check_machine_cert(ca_cert_pem: bytes, key_pem: bytes, cert_pem: bytes, machine: str, address: str) -> None:
    """TlsFileError unless CERT_PEM is MACHINE's certificate for ADDRESS, signed by the CA, valid,
    and KEY_PEM its key."""
    try:
        ca = x509.load_pem_x509_certificate(ca_cert_pem)
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, None)
    except ValueError as exc:
        raise TlsFileError(f"cannot be read ({exc})") from None
    ca_public = ca.public_key()
    if not isinstance(ca_public, Ed25519PublicKey):
        raise TlsFileError("the CA certificate's key is not an Ed25519 key")
    try:
        ca_public.verify(cert.signature, cert.tbs_certificate_bytes)
    except InvalidSignature:
        raise TlsFileError("is not signed by the cluster's backup CA (backup-tls-ca)") from None
    if not isinstance(key, Ed25519PrivateKey) or key.public_key() != cert.public_key():
        raise TlsFileError("the key and the certificate do not belong together")
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not cn or cn[0].value != machine:
        raise TlsFileError(f"names {cn[0].value if cn else 'nobody'!r}, not the machine {machine!r}")
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = x509.SubjectAlternativeName([])
    if ipaddress.ip_address(address) not in san.get_values_for_type(x509.IPAddress):
        ips = ", ".join(str(a) for a in san.get_values_for_type(x509.IPAddress)) or "none"
        raise TlsFileError(f"is for the address {ips}, and {machine}'s address is {address} now")
    if cert.not_valid_after_utc <= _now():
        raise TlsFileError(f"expired on {cert.not_valid_after_utc:%Y-%m-%d}")
