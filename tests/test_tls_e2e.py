"""TLS at a peer's ingress: `mesh up` serving HTTPS (and mTLS with `client_ca`) with real
certificates (trustme), called with httpx and curl, through to bravo's upstream."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trustme
from cryptography.hazmat.primitives import serialization

from mesh.config.roster import TLSFiles
from mesh.errors import ConfigError
from mesh.http.asgi import check_tls, lifespan
from tests.helpers.ports import Ports
from tests.helpers.processes import keygen, mesh_up, peer, run_mesh, served, write_roster

CURL = shutil.which("curl")


class Upstream:
    """bravo's upstream: answers every request with its method and path, and keeps the
    paths it was asked for."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        self.paths.append(scope["path"])
        body = f"upstream got {scope['method']} {scope['path']}".encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})


def write_pem(path: Path, *blobs: trustme.Blob) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(blob.bytes() for blob in blobs))
    return path


def server_files(folder: Path, ca: trustme.CA) -> dict[str, str]:
    """alpha's certificate for 127.0.0.1 from `ca`, and its key, as PEM files in
    `folder`/tls; the roster's `tls` setting for them (relative to the roster)."""
    leaf = ca.issue_cert("127.0.0.1")
    write_pem(folder / "tls/alpha.crt", *leaf.cert_chain_pems)
    write_pem(folder / "tls/alpha.key", leaf.private_key_pem)
    write_pem(folder / "tls/ca.crt", ca.cert_pem)
    return {"cert": "tls/alpha.crt", "key": "tls/alpha.key"}


def client_files(folder: Path, leaf: trustme.LeafCert, name: str) -> list[str]:
    """curl's options presenting client certificate `leaf` (written as PEM files)."""
    cert = write_pem(folder / f"tls/{name}.crt", *leaf.cert_chain_pems)
    key = write_pem(folder / f"tls/{name}.key", leaf.private_key_pem)
    return ["--cert", str(cert), "--key", str(key)]


def roster(folder: Path, ports: Ports, tls: dict[str, str]) -> Path:
    path = write_roster(
        folder,
        {
            "alpha": peer(ports.alpha, ["bravo"], tls=tls),
            "bravo": peer(ports.bravo, ["alpha"], upstream=f"http://127.0.0.1:{ports.upstream}"),
        },
    )
    keygen(path)
    return path


@asynccontextmanager
async def running(
    folder: Path, ports: Ports, tls: dict[str, str]
) -> AsyncIterator[tuple[str, Upstream]]:
    """`mesh up` for alpha (over TLS) and bravo, with bravo's upstream; alpha's https URL."""
    app = Upstream()
    async with served(app, ports.upstream), mesh_up(roster(folder, ports, tls)) as mesh:
        for line in ("alpha: HTTP ingress", "bravo: HTTP ingress", "alpha: first heard from"):
            await mesh.wait_for(line)
        yield f"https://127.0.0.1:{ports.alpha}", app
        assert await mesh.stop() == 130
    assert "Traceback" not in mesh.text, mesh.text


def trusting(ca_file: Path, cert: trustme.LeafCert | None = None) -> ssl.SSLContext:
    """A client's SSL context trusting the CA in `ca_file`, presenting `cert` if given."""
    context = ssl.create_default_context(cafile=str(ca_file))
    if cert is not None:
        cert.configure_cert(context)
    return context


async def get(url: str, verify: ssl.SSLContext) -> httpx.Response:
    async with httpx.AsyncClient(verify=verify, timeout=10) as client:
        return await client.get(url)


async def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    """curl's run: what it printed is the body then the status; `returncode` non-zero when
    the connection failed."""
    assert CURL is not None
    command = [CURL, "-sS", "--max-time", "10", "-w", " %{http_code}", *args]
    return await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False)


async def test_https_through_alpha_reaches_bravos_upstream(tmp_path: Path, ports: Ports) -> None:
    ca = trustme.CA()
    with trio.fail_after(30):
        async with running(tmp_path, ports, server_files(tmp_path, ca)) as (base, app):
            ca_file = tmp_path / "tls/ca.crt"
            reply = await get(f"{base}/bravo/orders/7", trusting(ca_file))
            assert (reply.status_code, reply.text) == (200, "upstream got GET /orders/7")
            if CURL:
                done = await curl("--cacert", str(ca_file), f"{base}/bravo/via/curl")
                assert (done.returncode, done.stdout) == (0, b"upstream got GET /via/curl 200")
            with pytest.raises(httpx.TransportError):  # plain HTTP on the TLS port: no answer
                async with httpx.AsyncClient(timeout=10) as plain:
                    await plain.get(f"http://127.0.0.1:{ports.alpha}/bravo/plain")
            with pytest.raises(httpx.ConnectError):  # a client checks alpha's certificate
                await get(f"{base}/bravo/unchecked", ssl.create_default_context())
            assert app.paths == ["/orders/7", "/via/curl"] if CURL else ["/orders/7"]


async def test_mtls_lets_in_only_clients_certified_by_client_ca(
    tmp_path: Path, ports: Ports
) -> None:
    ca, clients, strangers = trustme.CA(), trustme.CA(), trustme.CA()
    tls = {**server_files(tmp_path, ca), "client_ca": "tls/clients.crt"}
    write_pem(tmp_path / "tls/clients.crt", clients.cert_pem)
    ca_file = tmp_path / "tls/ca.crt"
    member = clients.issue_cert("billing@example.org")
    stranger = strangers.issue_cert("billing@example.org")  # same name, another CA
    with trio.fail_after(30):
        async with running(tmp_path, ports, tls) as (base, app):
            reply = await get(f"{base}/bravo/member", trusting(ca_file, member))
            assert (reply.status_code, reply.text) == (200, "upstream got GET /member")
            with pytest.raises(httpx.TransportError):  # refused in the handshake
                await get(f"{base}/bravo/no-cert", trusting(ca_file))
            with pytest.raises(httpx.TransportError):
                await get(f"{base}/bravo/stranger", trusting(ca_file, stranger))
            if CURL:
                trust = ["--cacert", str(ca_file)]
                member_files = client_files(tmp_path, member, "member")
                done = await curl(*trust, *member_files, f"{base}/bravo/curl-member")
                assert (done.returncode, done.stdout) == (0, b"upstream got GET /curl-member 200")
                done = await curl(*trust, f"{base}/bravo/curl-no-cert")
                assert done.returncode != 0, done
                stranger_files = client_files(tmp_path, stranger, "stranger")
                done = await curl(*trust, *stranger_files, f"{base}/bravo/curl-stranger")
                assert done.returncode != 0, done
            assert app.paths == ["/member", "/curl-member"] if CURL else ["/member"]


def test_a_missing_certificate_is_named_without_a_traceback(tmp_path: Path, ports: Ports) -> None:
    tls = {**server_files(tmp_path, trustme.CA()), "cert": "tls/nowhere.crt"}
    result = run_mesh("up", str(roster(tmp_path, ports, tls)))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    missing = tmp_path / "tls/nowhere.crt"
    said = [line.strip() for line in result.stderr.splitlines() if "alpha.tls" in line]
    assert said == [f"alpha.tls: cannot load the certificate {missing}: No such file or directory"]
    assert not (tmp_path / "state").exists()  # found before anything was made


def bad_files(folder: Path) -> list[tuple[TLSFiles, str]]:
    """TLS settings that cannot be loaded, each with what the refusal must say."""
    ca = trustme.CA()
    server_files(folder, ca)
    tls = folder / "tls"
    other = ca.issue_cert("127.0.0.1")
    write_pem(tls / "other.key", other.private_key_pem)
    (tls / "junk.pem").write_text("not a certificate\n")
    write_pem(tls / "locked.key", trustme.Blob(locked(other.private_key_pem.bytes())))
    cert, key = tls / "alpha.crt", tls / "alpha.key"
    return [
        (TLSFiles(cert=tls / "nowhere.crt", key=key), f"certificate {tls}/nowhere.crt: No such"),
        (TLSFiles(cert=tls / "junk.pem", key=key), f"certificate {tls}/junk.pem: no PEM cert"),
        (TLSFiles(cert=key, key=key), f"certificate {key}: no PEM certificate"),
        (TLSFiles(cert=cert, key=tls / "junk.pem"), f"key {tls}/junk.pem: no PEM private key"),
        (TLSFiles(cert=cert, key=cert), f"key {cert}: no PEM private key"),
        (TLSFiles(cert=cert, key=tls / "other.key"), f"does not go with the certificate {cert}"),
        (TLSFiles(cert=cert, key=tls / "locked.key"), "encrypted with a passphrase"),
        (
            TLSFiles(cert=cert, key=key, client_ca=tls / "junk.pem"),
            f"client_ca certificate {tls}/junk.pem: no PEM certificate",
        ),
        (TLSFiles(cert=cert, key=key, client_ca=tls), f"client_ca certificate {tls}: Is a dir"),
    ]


def locked(key_pem: bytes) -> bytes:
    """The private key in `key_pem`, encrypted under a passphrase."""
    key = serialization.load_pem_private_key(key_pem, password=None)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )


def test_unloadable_tls_files_are_said_in_words(tmp_path: Path) -> None:
    for tls, words in bad_files(tmp_path):
        with pytest.raises(ConfigError) as refused:
            check_tls(tls, "alpha.tls")
        assert str(refused.value).startswith("alpha.tls: cannot load the "), refused.value
        assert words in str(refused.value), (words, str(refused.value))
    good = TLSFiles(cert=tmp_path / "tls/alpha.crt", key=tmp_path / "tls/alpha.key")
    check_tls(good, "alpha.tls")
