"""Signed app bundles: a SuperNode runs only the apps (FABs) a key its operator trusts signed.

In deployment a SuperNode executes the ClientApp code shipped with each run, so whoever submits
runs could ship one that uploads the node's data. Flower 1.42's `flower-supernode
--trusted-entities FILE` closes that door: with it the SuperNode answers a run's messages only
if the run's FAB carries a valid Ed25519 signature by one of the keys in FILE (YAML, key id →
`ssh-ed25519 …` line); otherwise it replies with error 7 (`INVALID_FAB`) and runs nothing.

A signature covers `signed_at` (8 bytes, big endian, seconds) followed by SHA-256 of the FAB's
bytes, so it holds for exactly one bundle. Flower builds a FAB deterministically (fixed zip
timestamps), so a data owner can rebuild the bundle from the source they reviewed and sign it
without trusting anyone's copy.

Flower hands a FAB's signatures to the SuperNode only when its SuperLink fetched the app from an
app registry (`flwr run @publisher/name==x.y.z`; see `deploy.app_registry`). A FAB submitted
from a directory (`flwr run .`) carries none, so a SuperNode with trusted entities refuses it.

Files: a signing key is an OpenSSH Ed25519 private key (mode 0600) with its `.pub` line beside
it; a signature is JSON, `{"public_key_id": ..., "signature": <base64url>, "signed_at": <int>}`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from deploy.certs import NODE_NAME, refuse_existing, write_openssh_keypair, write_public

KEY_ID_PREFIX = "fpk_"  # the form Flower Hub gives its key ids
KEY_ID_HEX_DIGITS = 32


@dataclass(frozen=True)
class AppSigningKey:
    """One app-signing key pair (OpenSSH Ed25519).

    Attributes
    ----------
    private_key : private key (0600); only its holder signs.
    public_key : `ssh-ed25519 … NAME` line; SuperNode operators put it in their trusted entities.
    key_id : `fpk_` + 32 hex digits of SHA-256 over the raw 32-byte public key.
    """

    private_key: Path
    public_key: Path
    key_id: str


@dataclass(frozen=True)
class AppSignature:
    """A signature on one FAB, in the form Flower's SuperNode checks.

    Attributes
    ----------
    public_key_id : id of the signing key (the key's entry in the trusted-entities file).
    signature : Ed25519 signature over `signed_at` (8 bytes big endian) ‖ SHA-256(FAB),
        base64url without padding.
    signed_at : Unix time in seconds.
    """

    public_key_id: str
    signature: str
    signed_at: int

    def to_json(self) -> str:
        """The signature as one JSON object (what `serve-apps` reads)."""
        return json.dumps(
            {
                "public_key_id": self.public_key_id,
                "signature": self.signature,
                "signed_at": self.signed_at,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> AppSignature:
        """Parse `to_json` output; ValueError naming what is missing or malformed."""
        try:
            fields = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"app signature is not JSON: {error}") from error
        expected = {"public_key_id": str, "signature": str, "signed_at": int}
        if not isinstance(fields, dict) or set(fields) != set(expected):
            raise ValueError(
                f"app signature must have exactly the keys {sorted(expected)}, got "
                f"{sorted(fields) if isinstance(fields, dict) else type(fields).__name__}"
            )
        for key, kind in expected.items():
            if not isinstance(fields[key], kind) or isinstance(fields[key], bool):
                raise ValueError(
                    f"app signature {key!r} must be {kind.__name__}, got {fields[key]!r}"
                )
        return cls(**fields)


def key_id(public_key: Ed25519PublicKey) -> str:
    """The id under which `public_key` signs: `fpk_` + 32 hex digits of SHA-256 of its raw bytes."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return KEY_ID_PREFIX + hashlib.sha256(raw).hexdigest()[:KEY_ID_HEX_DIGITS]


def generate_app_signing_key(out_dir: Path, name: str) -> AppSigningKey:
    """Create `out_dir/NAME.key` (OpenSSH Ed25519, 0600) and `NAME.pub`; never overwrite."""
    if not NODE_NAME.match(name):
        raise ValueError(
            f"key name must be letters, digits, '_', '.', '-' (not starting with a "
            f"punctuation mark), got {name!r}"
        )
    private_path, public_path = out_dir / f"{name}.key", out_dir / f"{name}.pub"
    refuse_existing([private_path, public_path])
    key = Ed25519PrivateKey.generate()
    write_openssh_keypair(key, private_path, public_path, name)
    return AppSigningKey(private_path, public_path, key_id(key.public_key()))


def load_app_signing_key(private_key: Path) -> AppSigningKey:
    """The key pair whose private half is `private_key` (its `.pub` must lie beside it)."""
    _load_private(private_key)
    public_path = private_key.with_suffix(".pub")
    return AppSigningKey(private_key, public_path, key_id(_load_public(public_path)))


def write_trusted_entities(path: Path, public_keys: Sequence[Path]) -> Path:
    """Write the `--trusted-entities` YAML for `flower-supernode`: key id → `ssh-ed25519 …`.

    Parameters
    ----------
    path : the file to create (never overwritten).
    public_keys : `.pub` files of the keys whose signatures this SuperNode accepts (≥ 1).

    Returns
    -------
    Path : `path`.
    """
    if not public_keys:
        raise ValueError("a SuperNode must trust at least one app-signing key, got none")
    entities = {}
    for public_path in public_keys:
        public_key = _load_public(public_path)
        entities[key_id(public_key)] = public_path.read_text().strip()
    refuse_existing([path])
    write_public(path, yaml.safe_dump(entities, sort_keys=True).encode())
    return path


def sign_app(fab: bytes, private_key: Path, signed_at: int | None = None) -> AppSignature:
    """Sign the FAB bytes `fab` with the key at `private_key` (at `signed_at`, default now)."""
    if not fab:
        raise ValueError("cannot sign an empty FAB")
    key = _load_private(private_key)
    when = int(time.time()) if signed_at is None else signed_at
    if not 0 <= when < 2**63:
        raise ValueError(f"signed_at must be a Unix time in seconds >= 0, got {when}")
    message = when.to_bytes(8, "big") + hashlib.sha256(fab).digest()
    signature = base64.urlsafe_b64encode(key.sign(message)).rstrip(b"=").decode("ascii")
    return AppSignature(key_id(key.public_key()), signature, when)


def build_app(app_dir: Path) -> bytes:
    """The FAB `flwr build` makes from `app_dir` (deterministic: same sources, same bytes)."""
    from flwr.cli.build import build_fab_from_disk

    if not (app_dir / "pyproject.toml").is_file():
        raise ValueError(f"app directory must contain a pyproject.toml, got {app_dir}")
    return build_fab_from_disk(app_dir)


def app_spec(fab: bytes) -> str:
    """`@publisher/name==version` of a FAB: what `flwr run` names it by in a registry."""
    from flwr.common.config import get_fab_config, get_metadata_from_config

    fab_id, version = get_metadata_from_config(get_fab_config(fab))
    return f"@{fab_id}=={version}"


def _load_private(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read app-signing key {path}: {error}") from error
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"app-signing key {path} must be Ed25519, got {type(key).__name__}")
    return key


def _load_public(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_ssh_public_key(path.read_bytes())
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read app-signing public key {path}: {error}") from error
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(
            f"app-signing public key {path} must be ssh-ed25519 (what Flower verifies), got "
            f"{type(key).__name__}"
        )
    return key
