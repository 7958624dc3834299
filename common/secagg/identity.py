"""Long-term node identities (Ed25519) and the roster that vouches for them.

Every SecAgg+ public key a node advertises, and the survivor set it agrees to in the consistency
stage, is signed with the node's identity key. Peers accept a signature only from an identity on
a roster they got from their operator (in simulation: the launcher; in deployment: the
deploy tooling in ``deploy/``), never from the server alone. Each signed statement binds the
run, the round and the signer's node id (a survivor set also the key epoch and slot), so it
cannot be replayed for another run, epoch, slot, round or node.

Files: an identity is a PKCS#8 PEM private key written with mode 0600; a roster is JSON,
``{"format": "feddistill-secagg-roster/1", "members": {"NAME": "<64 hex digits>", ...}}``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from common.files import atomic_write_bytes

IDENTITY_BYTES = 32  # raw Ed25519 public key
SIGNATURE_BYTES = 64
ROSTER_FORMAT = "feddistill-secagg-roster/1"
MEMBER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_DOMAIN = b"feddistill/secagg/identity/v1/"
UINT64_MAX = 2**64 - 1


def _words(*values: int) -> bytes:
    """Run, round and node ids as 8-byte big-endian words (ValueError outside [0, 2^64))."""
    for value in values:
        if not isinstance(value, int) or not 0 <= value <= UINT64_MAX:
            raise ValueError(
                f"run, round and node ids must be integers in [0, 2^64), got {value!r}"
            )
    return struct.pack(f">{len(values)}Q", *values)


def keys_statement(run: int, round: int, node: int, c_pk: bytes, s_pks: bytes) -> bytes:
    """What a node signs when it advertises its X25519 public keys for a key epoch starting at
    ``round``: ``c_pk`` (32 bytes) and one mask key per round of the epoch, concatenated
    (32·R bytes, so R is bound too)."""
    return _DOMAIN + b"keys" + _words(run, round, node) + c_pk + s_pks


def survivors_statement(
    run: int, epoch: int, slot: int, round: int, node: int, survivors: Sequence[int]
) -> bytes:
    """What a node signs in the consistency stage: the survivor set U3 it was shown (sorted),
    for one slot of one key epoch (the epoch named by its first round) and one round, so a
    signature made for one (epoch, slot, round) counts for no other."""
    digest = hashlib.sha256(_words(len(survivors), *survivors)).digest()
    return _DOMAIN + b"survivors/2" + _words(run, epoch, slot, round, node) + digest


def masking_statement(
    run: int, epoch: int, slot: int, round: int, node: int, peers: Sequence[int]
) -> bytes:
    """What a node signs with its masked input: the neighbours it masked with (its share
    holders, sorted) in one slot of one key epoch and round. Holders check it before they
    release the node's self-mask shares, so the server cannot have a node mask with only part
    of its neighbourhood and then unmask a sub-group's sum."""
    digest = hashlib.sha256(_words(len(peers), *sorted(peers))).digest()
    return _DOMAIN + b"masking" + _words(run, epoch, slot, round, node) + digest


class NodeIdentity:
    """One node's Ed25519 signing key. Its repr never shows the private key.

    Parameters
    ----------
    private_key : bytes
        32 raw private-key bytes.
    """

    def __init__(self, private_key: bytes) -> None:
        if not isinstance(private_key, bytes) or len(private_key) != 32:
            raise ValueError("an identity private key must be 32 raw bytes")
        self._key = Ed25519PrivateKey.from_private_bytes(private_key)
        self.public_key = self._key.public_key().public_bytes_raw()

    def __repr__(self) -> str:
        return f"NodeIdentity(public_key={self.public_key.hex()[:16]}…)"

    @classmethod
    def generate(cls) -> NodeIdentity:
        """A fresh random identity."""
        return cls(Ed25519PrivateKey.generate().private_bytes_raw())

    @classmethod
    def load(cls, path: Path) -> NodeIdentity:
        """Read a PEM private key written by :meth:`save`.

        Raises
        ------
        ValueError
            If the file is missing or is not an Ed25519 private key (the message names the path,
            never the contents).
        """
        path = Path(path).expanduser()
        if not path.is_file():
            raise ValueError(f"SecAgg identity key file {str(path)!r} does not exist")
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except ValueError as error:
            raise ValueError(f"{str(path)!r} is not a PEM private key") from error
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{str(path)!r} is not an Ed25519 private key")
        return cls(key.private_bytes_raw())

    def save(self, path: Path) -> None:
        """Write the private key as unencrypted PKCS#8 PEM, readable by the owner only."""
        pem = self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        atomic_write_bytes(Path(path), pem)
        os.chmod(path, 0o600)

    def private_bytes(self) -> bytes:
        """The 32 raw private-key bytes (to keep in the node's protocol state only)."""
        return self._key.private_bytes_raw()

    def sign(self, statement: bytes) -> bytes:
        """64-byte Ed25519 signature of a statement built by ``*_statement``."""
        return self._key.sign(statement)

    def ledger_key(self) -> bytes:
        """A 32-byte key for the node's contribution ledger, derived from the identity key."""
        return hmac.new(self.private_bytes(), _DOMAIN + b"ledger", hashlib.sha256).digest()


def verify(identity: bytes, signature: bytes, statement: bytes) -> bool:
    """True if ``signature`` is the Ed25519 signature of ``statement`` by ``identity``."""
    if len(identity) != IDENTITY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(identity).verify(signature, statement)
    except (InvalidSignature, ValueError):
        return False
    return True


class Roster:
    """The identities a node accepts signatures from, by member name.

    Parameters
    ----------
    members : Mapping[str, bytes]
        Member name -> 32-byte Ed25519 public key; names and keys distinct.
    """

    def __init__(self, members: Mapping[str, bytes]) -> None:
        for name, key in members.items():
            if not MEMBER_NAME.fullmatch(name):
                raise ValueError(
                    f"roster member names must be letters, digits, '_', '.' or '-', got {name!r}"
                )
            if not isinstance(key, bytes) or len(key) != IDENTITY_BYTES:
                raise ValueError(f"roster member {name!r} needs a 32-byte Ed25519 public key")
        if len(set(members.values())) != len(members):
            raise ValueError("a roster lists the same identity key under two names")
        if not members:
            raise ValueError("a roster needs at least one member")
        self.members = dict(members)
        self.keys = frozenset(members.values())

    def __len__(self) -> int:
        return len(self.members)

    def __contains__(self, identity: object) -> bool:
        return identity in self.keys

    @classmethod
    def load(cls, path: Path) -> Roster:
        """Read a roster JSON file.

        Raises
        ------
        ValueError
            If the file is missing, not JSON, of another format, or lists a bad key.
        """
        path = Path(path).expanduser()
        if not path.is_file():
            raise ValueError(f"SecAgg roster file {str(path)!r} does not exist")
        try:
            document = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"SecAgg roster {str(path)!r} is not JSON: {error}") from error
        if not isinstance(document, dict) or document.get("format") != ROSTER_FORMAT:
            raise ValueError(f"SecAgg roster {str(path)!r} must have format {ROSTER_FORMAT!r}")
        members = document.get("members")
        if not isinstance(members, dict) or not all(isinstance(v, str) for v in members.values()):
            raise ValueError(f"SecAgg roster {str(path)!r}: 'members' must map names to hex keys")
        try:
            return cls({name: bytes.fromhex(key) for name, key in members.items()})
        except ValueError as error:
            raise ValueError(f"SecAgg roster {str(path)!r}: {error}") from error

    def save(self, path: Path) -> None:
        """Write the roster as JSON (public keys only)."""
        members = {name: key.hex() for name, key in sorted(self.members.items())}
        text = json.dumps({"format": ROSTER_FORMAT, "members": members}, indent=1)
        atomic_write_bytes(Path(path), (text + "\n").encode())

    def fingerprint(self) -> str:
        """Hex SHA-256 of the members (names and keys, sorted): what node operators compare
        out of band, so that a node accepts no roster the server alone made or edited."""
        canonical = json.dumps(
            {"format": ROSTER_FORMAT, "members": {n: k.hex() for n, k in self.members.items()}},
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode()).hexdigest()

    @classmethod
    def from_public_files(cls, paths: Sequence[Path]) -> Roster:
        """A roster of the public identities nodes made themselves (`create_node_identity`)."""
        members: dict[str, bytes] = {}
        for path in paths:
            name, key = load_public_identity(Path(path))
            if name in members:
                raise ValueError(f"two public identity files name the member {name!r}")
            members[name] = key
        return cls(members)


PUBLIC_IDENTITY_FORMAT = "feddistill-secagg-identity/1"


def create_node_identity(directory: Path, name: str) -> tuple[Path, Path]:
    """Make a node's own SecAgg+ identity on its host: `NAME.secagg.key` (private, 0600, never
    leaves the host) and `NAME.secagg.pub` (the public key, for the operator's roster).
    Existing files are never overwritten. Returns (private file, public file)."""
    if not MEMBER_NAME.fullmatch(name):
        raise ValueError(f"identity names must be letters, digits, '_', '.' or '-', got {name!r}")
    directory = Path(directory).expanduser()
    private, public = directory / f"{name}.secagg.key", directory / f"{name}.secagg.pub"
    for path in (private, public):
        if path.exists():
            raise ValueError(f"refusing to overwrite {str(path)!r}")
    directory.mkdir(parents=True, exist_ok=True)
    identity = NodeIdentity.generate()
    identity.save(private)
    document = {"format": PUBLIC_IDENTITY_FORMAT, "name": name, "key": identity.public_key.hex()}
    atomic_write_bytes(public, (json.dumps(document) + "\n").encode())
    return private, public


def load_public_identity(path: Path) -> tuple[str, bytes]:
    """(name, 32-byte key) of a public identity file; ValueError naming the file if bad."""
    if not path.is_file():
        raise ValueError(f"public identity file {str(path)!r} does not exist")
    try:
        document = json.loads(path.read_text())
        if document.get("format") != PUBLIC_IDENTITY_FORMAT:
            raise ValueError(f"format must be {PUBLIC_IDENTITY_FORMAT!r}")
        name, key = str(document["name"]), bytes.fromhex(str(document["key"]))
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, ValueError, AttributeError) as e:
        raise ValueError(f"{str(path)!r} is not a public identity file ({e})") from None
    if len(key) != IDENTITY_BYTES:
        raise ValueError(f"{str(path)!r}: the key must be {IDENTITY_BYTES} bytes")
    return name, key


ROSTER_FILE = "roster.json"


def identity_file(directory: Path, name: str) -> Path:
    """Where :func:`ensure_identities` keeps member ``name``'s private key."""
    return Path(directory) / f"{name}.key"


def ensure_identities(directory: Path, names: Sequence[str]) -> Path:
    """Create (or reuse) one identity per name and a roster of them under ``directory``.

    A roster already there is kept when it covers ``names`` (a resumed run keeps its identities);
    otherwise every identity is made afresh.

    Parameters
    ----------
    directory : Path
        Created with mode 0700; holds ``roster.json`` and ``NAME.key`` per member.
    names : Sequence[str]
        Member names, e.g. ``partition-0`` … in simulation or the SuperNode names in deployment.

    Returns
    -------
    Path
        The roster file.
    """
    directory = Path(directory)
    roster_path = directory / ROSTER_FILE
    if roster_path.exists():
        roster = Roster.load(roster_path)
        complete = set(names) <= set(roster.members) and all(
            identity_file(directory, name).exists() for name in names
        )
        if complete:
            return roster_path
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    members = {}
    for name in names:
        identity = NodeIdentity.generate()
        identity.save(identity_file(directory, name))
        members[name] = identity.public_key
    Roster(members).save(roster_path)
    return roster_path
