"""The third-party servers of tests/helpers/servers.py, each shown to work directly (no mesh)
with the real clients: git over smart HTTP, pip against pypiserver, boto3 against moto."""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from tests.helpers.clients import git, git_env, pip, random_ish
from tests.helpers.servers import S3Server, build_packages, git_server, moto_server, pypi_server

MiB = 1 << 20


# git ---------------------------------------------------------------------------------------


def pkt_line(text: str) -> bytes:
    return b"%04x%s" % (len(text) + 4, text.encode())


async def test_git_clone_and_push_over_smart_http(tmp_path: Path) -> None:
    env = git_env(tmp_path)
    root, log = tmp_path / "repos", tmp_path / "git.log"
    root.mkdir()
    await git(env, "init", "--bare", root / "demo.git")
    with trio.fail_after(60):
        async with git_server(root, log=log) as url:
            work = tmp_path / "work"
            await git(env, "clone", f"{url}/demo.git", work)  # empty, for now
            for n in range(3):  # 3 MiB of history that git cannot compress
                (work / f"blob{n}.bin").write_bytes(random_ish(MiB, n))
                (work / "notes.txt").write_text(f"commit {n}\n" * (n + 1))
                await git(env, "add", "-A", cwd=work)
                await git(env, "commit", "-q", "-m", f"commit {n}", cwd=work)
            await git(env, "push", "origin", "HEAD:main", cwd=work)
            head = (await git(env, "rev-parse", "HEAD", cwd=work)).strip()

            again = tmp_path / "again"
            await git(env, "clone", f"{url}/demo.git", again)
            assert (await git(env, "rev-parse", "HEAD", cwd=again)).strip() == head
            assert (await git(env, "rev-parse", "main", cwd=root / "demo.git")).strip() == head
            assert (again / "blob2.bin").read_bytes() == random_ish(MiB, 2)
            await git(env, "fsck", "--strict", cwd=root / "demo.git")

            # A v0 upload-pack request sent both chunked and gzipped, as httpx would send it:
            # the server de-chunks it, http-backend inflates it, and a pack comes back.
            wants = pkt_line(f"want {head}\n") + b"0000" + pkt_line("done\n")

            async def pieces() -> AsyncIterator[bytes]:
                packed = gzip.compress(wants)
                for i in range(0, len(packed), 7):
                    yield packed[i : i + 7]

            async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
                response = await client.post(
                    f"{url}/demo.git/git-upload-pack",
                    content=pieces(),
                    headers={
                        "Content-Type": "application/x-git-upload-pack-request",
                        "Content-Encoding": "gzip",
                    },
                )
                assert response.status_code == 200, response.text
                assert response.headers["content-type"] == "application/x-git-upload-pack-result"
                assert response.content.startswith(b"0008NAK\nPACK")
                v2 = await client.get(
                    f"{url}/demo.git/info/refs?service=git-upload-pack",
                    headers={"Git-Protocol": "version=2"},
                )
                assert b"000eversion 2\n" in v2.content  # Git-Protocol reaches the backend
                missing = await client.get(f"{url}/nothing.git/info/refs?service=git-upload-pack")
                assert missing.status_code == 404

    lines = log.read_text().splitlines()
    # git probes with a 4-byte POST before it sends a body over http.postBuffer (1 MiB) chunked.
    pushed = [line for line in lines if line.startswith("POST /demo.git/git-receive-pack 200")]
    assert [line.split()[3:5] for line in pushed] == [["te=-", "ce=-"], ["te=chunked", "ce=-"]]
    assert int(pushed[1].rsplit("in=", 1)[1]) > 3 * MiB
    assert any("te=chunked ce=gzip" in line for line in lines if "upload-pack 200" in line)


# pip ---------------------------------------------------------------------------------------


async def test_pip_installs_and_downloads_from_pypiserver(tmp_path: Path) -> None:
    packages, target, downloads = tmp_path / "packages", tmp_path / "target", tmp_path / "dl"
    build_packages(packages)
    with trio.fail_after(90):
        async with pypi_server(packages) as url:
            index = f"{url}/simple/"
            await pip("install", "--index-url", index, "--target", str(target), "meshdemo-app")
            await pip("download", "--index-url", index, "-d", str(downloads), "meshdemo-app")
            async with httpx.AsyncClient(base_url=url, trust_env=False) as client:
                page = await client.get("/simple/meshdemo-app/")
                assert page.status_code == 200
                assert 'href="/packages/meshdemo_app-1.0-py3-none-any.whl#sha256=' in page.text
                assert (await client.get("/simple/nothing-here/")).status_code == 404

    for module in ("meshdemo_lib", "meshdemo_app"):
        assert (target / module / "__init__.py").read_text() == 'VERSION = "1.0"\n'
        assert (target / f"{module}-1.0.dist-info" / "METADATA").exists()
    assert sorted(path.name for path in downloads.iterdir()) == [
        "meshdemo_app-1.0-py3-none-any.whl",
        "meshdemo_lib-1.0-py3-none-any.whl",
    ]
    for wheel in downloads.iterdir():
        assert wheel.read_bytes() == (packages / wheel.name).read_bytes()


# S3 ----------------------------------------------------------------------------------------


def s3_round_trip(s3: S3Server) -> None:
    """Bucket, a 20 MiB object, a 2-part multipart upload, whole and ranged gets, a listing,
    then everything deleted again; with the server's key."""
    client = s3.client()
    big, parts = random_ish(20 * MiB, 1), [random_ish(5 * MiB, 2), random_ish(5 * MiB + 123, 3)]
    client.create_bucket(Bucket="demo")
    put = client.put_object(Bucket="demo", Key="big.bin", Body=big)
    assert put["ETag"].strip('"') == hashlib.md5(big).hexdigest()

    upload = client.create_multipart_upload(Bucket="demo", Key="multi.bin")["UploadId"]
    etags = [
        client.upload_part(
            Bucket="demo", Key="multi.bin", UploadId=upload, PartNumber=n, Body=part
        )["ETag"]
        for n, part in enumerate(parts, 1)
    ]
    client.complete_multipart_upload(
        Bucket="demo",
        Key="multi.bin",
        UploadId=upload,
        MultipartUpload={
            "Parts": [{"ETag": etag, "PartNumber": n} for n, etag in enumerate(etags, 1)]
        },
    )

    assert client.get_object(Bucket="demo", Key="big.bin")["Body"].read() == big
    whole = b"".join(parts)
    assert client.get_object(Bucket="demo", Key="multi.bin")["Body"].read() == whole
    ranged = client.get_object(Bucket="demo", Key="big.bin", Range="bytes=1000-1999")
    assert ranged["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert ranged["ContentRange"] == f"bytes 1000-1999/{len(big)}"
    assert ranged["Body"].read() == big[1000:2000]
    tail = client.get_object(Bucket="demo", Key="multi.bin", Range=f"bytes={5 * MiB - 10}-")
    assert tail["Body"].read() == whole[5 * MiB - 10 :]

    listed = client.list_objects_v2(Bucket="demo")["Contents"]
    assert {item["Key"]: item["Size"] for item in listed} == {
        "big.bin": len(big),
        "multi.bin": len(whole),
    }
    gone = client.delete_objects(
        Bucket="demo", Delete={"Objects": [{"Key": "big.bin"}, {"Key": "multi.bin"}]}
    )
    assert sorted(item["Key"] for item in gone["Deleted"]) == ["big.bin", "multi.bin"]
    assert client.list_objects_v2(Bucket="demo")["KeyCount"] == 0
    client.delete_bucket(Bucket="demo")
    assert client.list_buckets()["Buckets"] == []


def refused(s3: S3Server) -> ClientError:
    """What a client signing with the right key id but a wrong secret gets."""
    with pytest.raises(ClientError) as caught:
        s3.client(secret_key="not-" + s3.secret_key).list_buckets()
    return caught.value


def signed_get(s3: S3Server, url: str) -> dict[str, str]:
    """The headers of a GET of `url` signed (SigV4, for S3) with the server's key."""
    request = AWSRequest(method="GET", url=url)
    S3SigV4Auth(Credentials(s3.access_key, s3.secret_key), "s3", s3.region).add_auth(request)
    return dict(request.headers.items())


async def test_boto3_against_moto_with_signatures_checked() -> None:
    with trio.fail_after(120):
        async with moto_server() as s3:
            await trio.to_thread.run_sync(s3_round_trip, s3)

            error = await trio.to_thread.run_sync(refused, s3)
            assert error.response["Error"]["Code"] == "SignatureDoesNotMatch"
            assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 403

            # The same signed request, as signed and with its Host changed afterwards.
            headers = await trio.to_thread.run_sync(partial(signed_get, s3, s3.url + "/"))
            async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
                ok = await client.get(s3.url + "/", headers=headers)
                assert ok.status_code == 200, ok.text
                port = s3.url.rsplit(":", 1)[1]
                moved = await client.get(
                    s3.url + "/", headers={**headers, "Host": f"localhost:{port}"}
                )
                assert moved.status_code == 403
                assert "<Code>SignatureDoesNotMatch</Code>" in moved.text
                # Unsigned (or presigned) is not served either: moto 5.2 fails with a 500, as
                # its check reads the Authorization header unconditionally.
                unsigned = await client.get(s3.url + "/")
                assert unsigned.status_code in (403, 500), unsigned.text
