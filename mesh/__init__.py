"""mesh: HTTP API calls across a file-transfer pipe.

The public API is re-exported here; modules hold one concept each:
`roster` (settings), `keys`/`crypto` (identities), `wire` (the file format),
`messages` (what frames hold), `received` (ack state), `names` (file names),
`pipe` (folders), `presence` (who is alive), `store` (durable state), `peer` (a running peer).
"""

from .crypto import Identity, Keyring, PublicIdentity
from .errors import (
    ConfigError,
    FormatError,
    KeyFileError,
    MeshError,
    MessageError,
    PeerLockedError,
)
from .keys import keygen, load_identity, load_public
from .messages import Control, Envelope, Fragment, Request, Response
from .names import FileKind, FileName, parse_name
from .peer import Peer, open_peers, run_peers
from .received import ReceivedState
from .roster import PeerSettings, Roster, RosterError, load_roster, parse_roster
from .wire import DecodedFile, Header, Limits, decode_file, encode_file, read_header

__all__ = [
    "ConfigError",
    "Control",
    "DecodedFile",
    "Envelope",
    "FileKind",
    "FileName",
    "FormatError",
    "Fragment",
    "Header",
    "Identity",
    "KeyFileError",
    "Keyring",
    "Limits",
    "MeshError",
    "MessageError",
    "Peer",
    "PeerLockedError",
    "PeerSettings",
    "PublicIdentity",
    "ReceivedState",
    "Request",
    "Response",
    "Roster",
    "RosterError",
    "decode_file",
    "encode_file",
    "keygen",
    "load_identity",
    "load_public",
    "load_roster",
    "open_peers",
    "parse_name",
    "parse_roster",
    "read_header",
    "run_peers",
]
