"""TLS certificates for the SuperLink and authentication key pairs for SuperNodes.

One operator-held CA signs the SuperLink's server certificate; every SuperNode trusts that CA
(`--root-certificates ca.crt`) and proves who it is with its own EC key pair, whose public half
the operator registers (`flwr supernode register KEY.pub`). Private keys are written with mode
0600 and never printed; files are created exclusively, so nothing existing is overwritten.

Layout written by `generate_deployment_files(out_dir, ...)`::

    ca.crt  ca.key                      CA certificate (public) and key (keep offline)
    server.pem  server.key              SuperLink certificate (SANs below) and key
    supernodes/NAME.key  NAME.pub       SuperNode auth key pair, OpenSSH format (P-384)

SecAgg+ identities are not made here: each node makes its own on its host
(`common.secagg.identity.create_node_identity`, `feddistill deploy node-identity`) and hands
over only the public file; the operator assembles the roster from those (`feddistill deploy
roster`) and every node pins the roster's fingerprint (node config `secagg-roster-sha256`).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_SANS = ("localhost", "127.0.0.1", "::1")
CURVE = ec.SECP384R1  # a NIST curve: what `flwr supernode register` accepts
NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class ServerFiles:
    """The CA and the SuperLink's TLS files.

    Attributes
    ----------
    ca_cert : CA certificate (PEM); every SuperNode and `flwr` user needs it.
    ca_key : CA private key (PEM, 0600); only the operator, ideally offline.
    server_cert : SuperLink certificate (PEM) signed by the CA.
    server_key : SuperLink private key (PEM, 0600); only the SuperLink host.
    sans : subject alternative names the server certificate covers.
    """

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    sans: tuple[str, ...]


@dataclass(frozen=True)
class NodeKeyPair:
    """One SuperNode's authentication key pair (OpenSSH format, EC P-384).

    Attributes
    ----------
    name : the node's name (file stem; also the public key's comment).
    private_key : private key (0600); stays on the SuperNode host.
    public_key : public key; registered at the SuperLink with `flwr supernode register`.
    """

    name: str
    private_key: Path
    public_key: Path


@dataclass(frozen=True)
class DeploymentFiles:
    """Everything `generate_deployment_files` wrote."""

    server: ServerFiles
    nodes: tuple[NodeKeyPair, ...]


def san_entries(extra: Sequence[str] = ()) -> tuple[str, ...]:
    """`DEFAULT_SANS` plus `extra` (IP addresses or DNS names), without duplicates, in order.

    Raises
    ------
    ValueError : an entry is empty, contains a scheme or port, or is not a valid DNS name.
    """
    entries: list[str] = []
    for raw in (*DEFAULT_SANS, *extra):
        value = raw.strip()
        _general_name(value)  # validates
        if value not in entries:
            entries.append(value)
    return tuple(entries)


def generate_server_files(
    out_dir: Path, extra_sans: Sequence[str] = (), days: int = 365
) -> ServerFiles:
    """Create a CA and a SuperLink server certificate signed by it.

    Parameters
    ----------
    out_dir : directory for ca.crt, ca.key, server.pem, server.key (created if missing).
    extra_sans : host names or IP addresses SuperNodes will use to reach the SuperLink,
        added to 127.0.0.1, ::1 and localhost.
    days : validity of both certificates in days.

    Returns
    -------
    ServerFiles : the paths written and the SANs covered.
    """
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    sans = san_entries(extra_sans)
    common_name = sans[len(DEFAULT_SANS)] if len(sans) > len(DEFAULT_SANS) else sans[0]
    files = ServerFiles(
        ca_cert=out_dir / "ca.crt",
        ca_key=out_dir / "ca.key",
        server_cert=out_dir / "server.pem",
        server_key=out_dir / "server.key",
        sans=sans,
    )
    refuse_existing([files.ca_cert, files.ca_key, files.server_cert, files.server_key])
    now = datetime.now(UTC)
    not_before, not_after = now - CLOCK_SKEW, now + timedelta(days=days)

    ca_key = ec.generate_private_key(CURVE())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "feddistill deployment CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA384())
    )

    server_key = ec.generate_private_key(CURVE())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([_general_name(value) for value in sans]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA384())
    )

    write_private(files.ca_key, _pem_private(ca_key))
    write_public(files.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))
    write_private(files.server_key, _pem_private(server_key))
    write_public(files.server_cert, server_cert.public_bytes(serialization.Encoding.PEM))
    return files


def generate_node_key(out_dir: Path, name: str) -> NodeKeyPair:
    """Create one SuperNode authentication key pair: `out_dir/NAME.key` and `NAME.pub`.

    The private key is in OpenSSH format without a passphrase (what `flower-supernode
    --auth-supernode-private-key` loads); the public key is one OpenSSH line
    (`ecdsa-sha2-nistp384 … NAME`, what `flwr supernode register` loads).
    """
    if not NODE_NAME.match(name):
        raise ValueError(
            f"node name must be letters, digits, '_', '.', '-' (not starting with a "
            f"punctuation mark), got {name!r}"
        )
    pair = NodeKeyPair(
        name=name, private_key=out_dir / f"{name}.key", public_key=out_dir / f"{name}.pub"
    )
    refuse_existing([pair.private_key, pair.public_key])
    write_openssh_keypair(ec.generate_private_key(CURVE()), pair.private_key, pair.public_key, name)
    return pair


def generate_deployment_files(
    out_dir: Path, extra_sans: Sequence[str] = (), nodes: int = 0, days: int = 365
) -> DeploymentFiles:
    """CA + SuperLink certificate, and `nodes` SuperNode key pairs named supernode-0, -1, ….

    For a real deployment each SuperNode should rather create its own key pair on its host
    (`generate_node_key`) and send only the public key to the operator.
    """
    if nodes < 0:
        raise ValueError(f"nodes must be >= 0, got {nodes}")
    node_dir = out_dir / "supernodes"
    names = [f"supernode-{i}" for i in range(nodes)]
    refuse_existing([node_dir / f"{n}{suffix}" for n in names for suffix in (".key", ".pub")])
    server = generate_server_files(out_dir, extra_sans, days)
    pairs = tuple(generate_node_key(node_dir, name) for name in names)
    return DeploymentFiles(server=server, nodes=pairs)


def _general_name(value: str) -> x509.GeneralName:
    if _is_ip(value):
        return x509.IPAddress(ipaddress.ip_address(value))
    if not value or any(char in value for char in "/:@ "):
        raise ValueError(
            f"SAN must be a bare IP address or DNS name (no scheme, port or path), got {value!r}"
        )
    labels = value.rstrip(".").split(".")
    label = re.compile(r"^(\*|[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)$")
    if not all(label.match(part) for part in labels):
        raise ValueError(f"SAN {value!r} is neither an IP address nor a valid DNS name")
    return x509.DNSName(value)


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _key_usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _pem_private(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_openssh_keypair(
    key: ec.EllipticCurvePrivateKey | Ed25519PrivateKey,
    private_path: Path,
    public_path: Path,
    comment: str,
) -> None:
    """Write `key` in OpenSSH formats: the private key 0600, the public one with `comment`."""
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    write_private(private_path, private)
    write_public(public_path, public + f" {comment}\n".encode())


def refuse_existing(paths: Sequence[Path]) -> None:
    """ValueError naming every path in `paths` that already exists (keys are never replaced)."""
    existing = [str(path) for path in paths if path.exists()]
    if existing:
        raise ValueError(f"refusing to overwrite existing key/certificate file(s): {existing}")


def write_private(path: Path, data: bytes) -> None:
    """Create `path` with mode 0600 (whatever the umask) and write `data`; never overwrite."""
    _write_exclusive(path, data, 0o600)


def write_public(path: Path, data: bytes) -> None:
    """Create `path` with mode 0644 and write `data`; never overwrite."""
    _write_exclusive(path, data, 0o644)


def _write_exclusive(path: Path, data: bytes, mode: int) -> None:
    # O_EXCL: never follow or replace an existing file; the mode is set at creation, so a
    # private key is never readable by others, whatever the umask.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # umask may have removed bits from public files
        with os.fdopen(fd, "wb") as handle:
            fd = -1
            handle.write(data)
    finally:
        if fd >= 0:
            os.close(fd)
