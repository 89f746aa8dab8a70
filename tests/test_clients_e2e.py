"""Real clients against real servers behind bravo, called through alpha (`mesh up` as a
subprocess, a shared local folder as the pipe): git over smart HTTP, pip against
pypiserver, boto3 against a moto S3 that checks signatures, and curl's edge cases
against an upstream that answers with exact bytes. After each, alpha has nothing in
flight and no body file of a response it streamed."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from botocore.config import Config

from tests.helpers.clients import git, git_env, pip, random_ish
from tests.helpers.ports import free_ports
from tests.helpers.processes import MeshProcess, keygen, mesh_up, peer, write_roster
from tests.helpers.raw_upstream import raw_upstream
from tests.helpers.servers import S3Server, build_packages, git_server, moto_server, pypi_server

MiB = 1 << 20
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "date", "mesh-request-id"}


def two_peers(
    tmp_path: Path, upstream: str, alpha_limit: str = "4MiB", **bravo: Any
) -> tuple[Path, int]:
    """A roster of alpha (in front, taking bodies up to `alpha_limit`) and bravo (before
    `upstream`, with `bravo` settings); and alpha's port."""
    alpha_port, bravo_port = free_ports(2)
    path = write_roster(
        tmp_path,
        {
            "alpha": peer(alpha_port, ["bravo"], body_limit=alpha_limit),
            "bravo": peer(bravo_port, ["alpha"], upstream=upstream, **bravo),
        },
        defaults={"heartbeat": "500ms", "linger": "2ms"},
    )
    keygen(path)
    return path, alpha_port


@asynccontextmanager
async def running(path: Path) -> AsyncIterator[MeshProcess]:
    async with mesh_up(path) as mesh:
        for name in ("alpha", "bravo"):
            await mesh.wait_for(f"{name}: HTTP ingress")
        await mesh.wait_for("alpha: first heard from bravo")
        yield mesh


def kept(bodies: Path) -> list[Path]:
    """The files of incoming bodies in folder `bodies`: their own, and pieces of them."""
    return [*bodies.glob("in-*"), *bodies.glob("p-*")]


async def settled(alpha_port: int, state: Path) -> None:
    """Wait (bounded) until alpha has no request in flight and no body file of a response
    left (each was streamed whole to the caller that waited for it, then removed)."""
    status = f"http://127.0.0.1:{alpha_port}/mesh/status"
    bodies = state / "alpha" / "bodies"
    async with httpx.AsyncClient(trust_env=False) as client:
        with trio.move_on_after(20):
            while (await client.get(status)).json()["requests"] or kept(bodies):  # noqa: ASYNC110 (another process)
                await trio.sleep(0.05)
            return
        left = (await client.get(status)).json()["requests"], kept(bodies)
        raise AssertionError(f"in flight, body files: {left}")


@contextmanager
def localhost_names_resolve() -> Iterator[None]:
    """Names under ``localhost`` resolve to loopback in this process, as RFC 6761 says
    resolvers should (curl and systemd-resolved do; this machine's libc does not)."""
    original = socket.getaddrinfo

    def resolving(host: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host.endswith(".localhost"):
            host = "127.0.0.1"
        return original(host, *args, **kwargs)

    socket.getaddrinfo = resolving
    try:
        yield
    finally:
        socket.getaddrinfo = original


# curl ----------------------------------------------------------------------------------------


async def curl(*args: str) -> tuple[str, list[tuple[str, str]], bytes, list[str]]:
    """`curl -si ARGS`: the final status line, its headers, the body, and the status lines
    of interim (1xx) answers before it."""
    command = ["curl", "-si", "--noproxy", "", "--max-time", "60", *args]
    result = await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False)
    assert result.returncode == 0, result.stderr.decode()
    data, interim = result.stdout, []
    while True:
        head, _, data = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        if not lines[0].split(" ")[1].startswith("1"):
            break
        interim.append(lines[0])
    headers = [
        (n.strip().lower(), v.strip()) for n, v in (line.split(":", 1) for line in lines[1:])
    ]
    return lines[0], headers, data, interim


def end_to_end(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(name, value) for name, value in headers if name not in HOP_BY_HOP]


async def test_curl_edge_cases(tmp_path: Path) -> None:
    async with raw_upstream() as (url, upstream):
        path, port = two_peers(tmp_path, url)
        alpha = f"http://127.0.0.1:{port}"
        async with running(path):
            with trio.fail_after(60):
                await _same_heads_as_direct(url, alpha)
                await _refused_at_once(alpha, tmp_path)
                await _bodies_and_framing(url, alpha, tmp_path)
            await settled(port, tmp_path / "state")
        assert upstream.calls["/bighead/80"] == 1 and upstream.calls["/bighead/300"] == 1
        assert upstream.calls["/pay"] == 0
        assert not any(path.startswith("/ravo") or "%" in path for path in upstream.calls)


async def _same_heads_as_direct(direct: str, alpha: str) -> None:
    """204, 304, HEAD, a reason phrase, duplicate headers: the same head as direct."""
    for args in (["/204"], ["/304"], ["-I", "/head"], ["/reason"], ["/dup"]):
        *options, target = args
        there = await curl(*options, direct + target)
        through = await curl(*options, f"{alpha}/bravo{target}")
        assert through[0] == there[0], (target, through[0])
        varies = {"content-length"} if target == "/dup" else set()  # the request echoed
        same = [(name, value) for name, value in end_to_end(there[1]) if name not in varies]
        assert [(n, v) for n, v in end_to_end(through[1]) if n not in varies] == same, target
    _, _, echoed, _ = await curl("-H", "X-Twice: 1", "-H", "X-Twice: 2", f"{alpha}/bravo/dup")
    assert b"x-twice: 1\nx-twice: 2" in echoed.lower()  # request headers in order, both


async def _refused_at_once(alpha: str, tmp_path: Path) -> None:
    """What the far side could not take is answered by alpha at once (problem+json)."""
    many = tmp_path / "headers.txt"
    many.write_text("".join(f'header = "X-H{i}: {i}"\n' for i in range(1100)))
    cases = [
        (["--get", "--data", "q=" + "a" * (17 << 10)], "/bravo/x", "414"),
        (["-K", str(many)], "/bravo/x", "431"),
        (["-X", "M" * 40], "/bravo/x", "400"),
        (["--path-as-is"], "//bravo/x", "400"),
        (["--path-as-is"], "/%62ravo/x", "400"),
    ]
    for options, target, status in cases:
        line, headers, body, _ = await curl(*options, alpha + target)
        assert line.split(" ")[1] == status, (target, line, body[:200])
        assert dict(headers)["content-type"] == "application/problem+json"
        assert dict(headers)["mesh-problem"] == "alpha"
    line, _, _, _ = await curl("-H", "Mesh-Timeout: soon", "-d", "pay=1", alpha + "/bravo/pay")
    assert line.split(" ")[1] == "400"  # refused before it was stored: never paid
    for kib, why in ((80, "head is over what crosses"), (300, "bad reply")):
        line, _, body, _ = await curl(f"{alpha}/bravo/bighead/{kib}")
        assert line.split(" ")[1] == "502" and why in json.loads(body)["title"], body


async def _bodies_and_framing(direct: str, alpha: str, tmp_path: Path) -> None:
    """A chunked upload, 100-continue over the limit, HTTP/1.0, a close-delimited answer,
    OPTIONS *, a response big enough to be spooled."""
    body = tmp_path / "body.bin"
    body.write_bytes(random_ish(3 * MiB, 1))
    _, _, echoed, interim = await curl(
        "-H", "Transfer-Encoding: chunked", "--data-binary", f"@{body}", f"{alpha}/bravo/up"
    )
    assert echoed == f"POST /up {3 * MiB}".encode() and interim == ["HTTP/1.1 100 "]
    body.write_bytes(random_ish(5 * MiB, 2))  # over alpha's 4 MiB
    started = trio.current_time()
    line, _, _, interim = await curl(
        "-H", "Expect: 100-continue", "--data-binary", f"@{body}", f"{alpha}/bravo/up"
    )
    assert line.split(" ")[1] == "413" and interim == [] and trio.current_time() - started < 1
    line, _, echoed, _ = await curl("-0", f"{alpha}/bravo/old")
    assert echoed == b"GET /old 0"
    _, _, whole, _ = await curl(f"{alpha}/bravo/close")
    assert whole == (await curl(f"{direct}/close"))[2]
    _, _, asked, _ = await curl("-X", "OPTIONS", "--request-target", "http://bravo", alpha)
    assert asked == b"OPTIONS * 0"
    _, _, big, _ = await curl(f"{alpha}/bravo/bytes/{2 * MiB}")
    assert big == b"x" * (2 * MiB)
    hosted = alpha.replace("127.0.0.1", "bravo.localhost")  # curl resolves it to loopback
    _, _, echoed, _ = await curl(f"{hosted}/any/path?q=1")
    assert echoed == b"GET /any/path?q=1 0"  # the host form: the whole target, untouched
    line, _, _, _ = await curl("--http2", f"{alpha}/bravo/h2c")  # asks to switch: ignored
    assert line.startswith("HTTP/1.1 200")
    _, _, echoed, _ = await curl(
        "-H",
        "X_Forwarded_Host: evil",
        "-H",
        "X-Real-IP: 6.6.6.6",
        "-H",
        "X-Forwarded-Port: 1",
        f"{alpha}/bravo/dup",
    )
    assert b"evil" not in echoed and b"6.6.6.6" not in echoed and b"port" not in echoed


async def test_a_slow_answer_is_waited_for_not_a_202(tmp_path: Path) -> None:
    """A plain client waits past 30 s for its answer (as through any proxy); one that
    asks for `Prefer: wait=1` gets a 202 with a Retry-After."""
    async with raw_upstream() as (url, _):
        path, port = two_peers(tmp_path, url)
        async with running(path):
            with trio.fail_after(60):
                line, _, body, _ = await curl("-f", f"http://127.0.0.1:{port}/bravo/slow/31")
                assert line.split(" ")[1] == "200" and body == b"slow"
                line, headers, _, _ = await curl(
                    "-H", "Prefer: wait=1", f"http://127.0.0.1:{port}/bravo/slow/2"
                )
                assert line.split(" ")[1] == "202" and int(dict(headers)["retry-after"]) >= 1
            await settled(port, tmp_path / "state")


async def test_a_caller_that_leaves_midway_finds_its_answer_kept(tmp_path: Path) -> None:
    """A caller that goes away while its response streams does not lose it: the body
    file is kept, and the status URL gives it whole."""
    size = 32 * MiB  # more than socket buffers hold
    async with raw_upstream() as (url, _):
        path, port = two_peers(tmp_path, url, "64MiB")
        async with running(path):
            alpha = f"http://127.0.0.1:{port}"
            with trio.fail_after(60):
                async with (
                    httpx.AsyncClient(base_url=alpha, trust_env=False) as client,
                    client.stream("GET", f"/bravo/bytes/{size}") as reply,
                ):
                    request_id = reply.headers["mesh-request-id"]
                    async for _ in reply.aiter_raw(65536):
                        break  # one piece, then gone
                async with httpx.AsyncClient(base_url=alpha, trust_env=False) as client:
                    again = await client.get(f"/mesh/requests/{request_id}/response")
                    while again.status_code == 202:  # still streaming in: another process
                        await trio.sleep(0.1)
                        again = await client.get(f"/mesh/requests/{request_id}/response")
            assert again.status_code == 200 and again.content == b"x" * size


# git -----------------------------------------------------------------------------------------


async def test_git_clone_and_push_through_the_mesh(tmp_path: Path) -> None:
    env = git_env(tmp_path)
    root = tmp_path / "repos"
    root.mkdir()
    await git(env, "init", "--bare", root / "demo.git")
    async with git_server(root) as url:
        path, port = two_peers(tmp_path, url, "64MiB")
        async with running(path):
            with trio.fail_after(120):
                by_path = f"http://127.0.0.1:{port}/bravo/demo.git"
                head = await _push_history(env, tmp_path / "work", by_path)
                proxy = ["-c", f"http.proxy=http://127.0.0.1:{port}"]
                again = tmp_path / "again"
                await git(env, *proxy, "clone", "http://bravo/demo.git", again)
                assert (await git(env, "rev-parse", "HEAD", cwd=again)).strip() == head
                (again / "more.bin").write_bytes(random_ish(MiB, 9))
                await git(env, "add", "-A", cwd=again)
                await git(env, "commit", "-q", "-m", "more", cwd=again)
                await git(env, *proxy, "push", "origin", "HEAD:main", cwd=again)
                pushed = (await git(env, "rev-parse", "HEAD", cwd=again)).strip()
                await git(env, "clone", by_path, tmp_path / "third")
                assert (
                    await git(env, "rev-parse", "HEAD", cwd=tmp_path / "third")
                ).strip() == pushed
                await git(env, "fsck", "--strict", cwd=root / "demo.git")
            await settled(port, tmp_path / "state")


async def _push_history(env: dict[str, str], work: Path, url: str) -> str:
    """Clone `url` (empty), commit 3 MiB of history that does not compress, push; HEAD."""
    await git(env, "clone", url, work)
    for n in range(3):
        (work / f"blob{n}.bin").write_bytes(random_ish(MiB, n))
        await git(env, "add", "-A", cwd=work)
        await git(env, "commit", "-q", "-m", f"commit {n}", cwd=work)
    await git(env, "push", "origin", "HEAD:main", cwd=work)
    return (await git(env, "rev-parse", "HEAD", cwd=work)).strip()


# pip -----------------------------------------------------------------------------------------

# Makes names under localhost resolve to loopback in pip's process (see above).
SITECUSTOMIZE = """
import socket
_original = socket.getaddrinfo
def _resolving(host, *args, **kwargs):
    if isinstance(host, str) and host.endswith(".localhost"):
        host = "127.0.0.1"
    return _original(host, *args, **kwargs)
socket.getaddrinfo = _resolving
"""


async def test_pip_installs_through_the_mesh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Host form and proxy form. Not the path form: pypiserver's pages link to
    ``/packages/...`` from the root and it ignores X-Forwarded-Prefix (README)."""
    packages = tmp_path / "packages"
    build_packages(packages)
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(SITECUSTOMIZE)
    monkeypatch.setenv("PYTHONPATH", str(shim))
    async with pypi_server(packages) as url:
        path, port = two_peers(tmp_path, url)
        async with running(path):
            with trio.fail_after(120):
                # plain HTTP: pip wants each such host named as trusted
                hosted = ["--index-url", f"http://bravo.localhost:{port}/simple/"]
                hosted += ["--trusted-host", "bravo.localhost"]
                proxy = ["--proxy", f"http://127.0.0.1:{port}", "--trusted-host", "bravo"]
                proxy += ["--index-url", "http://bravo/simple/"]
                for form, (into, saved) in ((hosted, "ac"), (proxy, "bd")):
                    await pip("install", *form, "--target", str(tmp_path / into), "meshdemo-app")
                    await pip("download", *form, "-d", str(tmp_path / saved), "meshdemo-app")
            await settled(port, tmp_path / "state")
    for folder in ("a", "b"):
        installed = sorted(p.name for p in (tmp_path / folder).glob("*.dist-info"))
        assert installed == ["meshdemo_app-1.0.dist-info", "meshdemo_lib-1.0.dist-info"]
    for folder in ("c", "d"):
        assert len(list((tmp_path / folder).glob("*.whl"))) == 2


# S3 ------------------------------------------------------------------------------------------


async def test_s3_with_signatures_checked_through_the_mesh(tmp_path: Path) -> None:
    """boto3 against moto checking SigV4 (which signs `Host`): bravo has `preserve_host`."""
    async with moto_server() as s3:
        path, port = two_peers(tmp_path, s3.url, "64MiB", preserve_host=True)
        async with running(path):
            with trio.fail_after(180):
                proxied = _client(s3, "http://bravo", {"http": f"http://127.0.0.1:{port}"})
                await trio.to_thread.run_sync(_s3_round, proxied, "proxied")
                with localhost_names_resolve():
                    hosted = _client(s3, f"http://bravo.localhost:{port}", {})
                    await trio.to_thread.run_sync(_s3_round, hosted, "hosted")
            await settled(port, tmp_path / "state")


def _client(s3: S3Server, endpoint: str, proxies: dict[str, str]) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=s3.region,
        aws_access_key_id=s3.access_key,
        aws_secret_access_key=s3.secret_key,
        config=Config(
            s3={"addressing_style": "path"}, retries={"max_attempts": 1}, proxies=proxies
        ),
    )


def _s3_round(client: Any, bucket: str) -> None:
    """Create a bucket, put 20 MiB, a multipart upload, get, ranged get, list, delete."""
    client.create_bucket(Bucket=bucket)
    big = random_ish(20 * MiB, 3)
    client.put_object(Bucket=bucket, Key="big", Body=big)
    upload = client.create_multipart_upload(Bucket=bucket, Key="parts")["UploadId"]
    parts = [random_ish(5 * MiB, 4), random_ish(MiB, 5)]
    done = [
        {"ETag": client.upload_part(
            Bucket=bucket, Key="parts", UploadId=upload, PartNumber=n, Body=part
        )["ETag"], "PartNumber": n}
        for n, part in enumerate(parts, 1)
    ]  # fmt: skip
    client.complete_multipart_upload(
        Bucket=bucket, Key="parts", UploadId=upload, MultipartUpload={"Parts": done}
    )
    assert client.get_object(Bucket=bucket, Key="big")["Body"].read() == big
    ranged = client.get_object(Bucket=bucket, Key="parts", Range="bytes=100-199")
    assert ranged["Body"].read() == b"".join(parts)[100:200]
    listed = client.list_objects_v2(Bucket=bucket)["Contents"]
    assert sorted(o["Key"] for o in listed) == ["big", "parts"]
    client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "big"}, {"Key": "parts"}]})
    client.delete_bucket(Bucket=bucket)
