"""mesh: HTTP API calls across a file-transfer pipe.

The public API is re-exported here. The package is laid out as its layers, each a folder
imported only by the layers above it (`tests/test_layers.py` holds the rules): `proto`
(the pure core), `wire` (what crosses the pipe), `state` (SQLite), `pipe` (folders and the
links driver), `http` (ingress, forwarder, callbacks), `cli`; `config` (roster, keys,
units) beside them; `peer` puts one running peer together.
"""

from .config.keys import keygen, load_identity, load_public
from .config.roster import PeerSettings, Roster, RosterError, load_roster, parse_roster
from .errors import (
    ConfigError,
    FormatError,
    KeyFileError,
    MeshError,
    MessageError,
    PeerLockedError,
)
from .peer import Peer, open_peers, run_peers
from .proto.received import ReceivedState
from .wire.crypto import Identity, Keyring, PublicIdentity
from .wire.fileformat import DecodedFile, Header, Limits, decode_file, encode_file, read_header
from .wire.messages import Control, Envelope, Fragment, Request, Response
from .wire.names import FileKind, FileName, parse_name

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
