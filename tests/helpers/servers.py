"""Real third-party servers on loopback, each its own process on a port the kernel chose:
git's smart HTTP (`git http-backend` behind tests/helpers/git_cgi.py), a package index
(pypiserver) and S3 (moto, with SigV4 signatures checked). Each is an async context manager
that yields once the server answers and stops its whole process group at the end."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

import boto3
import httpx
import trio
from botocore.config import Config

from tests.helpers.ports import free_ports
from tests.helpers.processes import stop_group

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

GIT_CGI = Path(__file__).with_name("git_cgi.py")


@asynccontextmanager
async def serving(
    name: str, command: Sequence[str], probe: str, env: dict[str, str] | None = None
) -> AsyncIterator[trio.Process]:
    """`command` running in its own session for the block's duration, entered once a GET of
    `probe` has any HTTP answer (within 30 s); its output is shown only if it never does."""
    output: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed below)
    process = await trio.lowlevel.open_process(
        list(command),
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        start_new_session=True,  # its own process group, so stop_group ends its children
    )
    try:
        ready = False
        async with httpx.AsyncClient(timeout=5, trust_env=False) as client:
            with trio.move_on_after(30):
                while not ready and process.poll() is None:
                    try:
                        await client.get(probe)
                        ready = True
                    except httpx.TransportError:
                        await trio.sleep(0.05)  # still starting
        if not ready:
            output.seek(0)
            log = output.read().decode(errors="replace")
            raise RuntimeError(f"{name} did not start ({process.returncode}):\n{log}")
        yield process
    finally:
        await stop_group(process)
        output.close()


# git ---------------------------------------------------------------------------------------


@asynccontextmanager
async def git_server(root: Path, log: Path | None = None) -> AsyncIterator[str]:
    """Git smart HTTP (clone and push) for the bare repositories under `root`: the real
    `git http-backend`, behind git_cgi.py. Yields the base URL; `root/NAME.git` is at
    `URL/NAME.git`. With `log`, the server appends a line per request to it."""
    (port,) = free_ports(1)
    command = [sys.executable, str(GIT_CGI), str(root), str(port)]
    if log is not None:
        command += ["--log", str(log)]
    url = f"http://127.0.0.1:{port}"
    async with serving("git http-backend", command, url + "/"):
        yield url


# Python packages ---------------------------------------------------------------------------


@asynccontextmanager
async def pypi_server(packages: Path) -> AsyncIterator[str]:
    """pypiserver serving the distributions in `packages`, to anyone, without falling back
    to another index for names it does not have. Yields the base URL (the index is at
    `URL/simple/`)."""
    (port,) = free_ports(1)
    command = [
        sys.executable, "-m", "pypiserver", "run",
        "--port", str(port),
        "--host", "127.0.0.1",
        "--authenticate", ".",  # nobody needs a password for anything
        "--passwords", ".",
        "--disable-fallback",  # a name it lacks is 404, not a redirect to pypi.org
        "--log-stream", "none",
        str(packages),
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    async with serving("pypiserver", command, url + "/health"):
        yield url


DEMO_PACKAGES = {"meshdemo-lib": (), "meshdemo-app": ("meshdemo-lib",)}


def build_packages(folder: Path) -> None:
    """Two pure-Python wheels in `folder`, made here with no network: meshdemo-lib 1.0,
    and meshdemo-app 1.0 which requires it."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, requires in DEMO_PACKAGES.items():
        write_wheel(folder, name, "1.0", requires)


def write_wheel(folder: Path, name: str, version: str, requires: Sequence[str] = ()) -> Path:
    """A `py3-none-any` wheel of distribution `name` with one module (the name with
    underscores) that knows its version, its RECORD hashed as installers check."""
    module = name.replace("-", "_")
    info = f"{module}-{version}.dist-info"
    metadata = "".join(
        [
            "Metadata-Version: 2.1\n",
            f"Name: {name}\n",
            f"Version: {version}\n",
            f"Summary: {name}, a package for the mesh tests\n",
            *(f"Requires-Dist: {need}\n" for need in requires),
        ]
    )
    files = {
        f"{module}/__init__.py": f'VERSION = "{version}"\n',
        f"{info}/METADATA": metadata,
        f"{info}/WHEEL": (
            "Wheel-Version: 1.0\n"
            "Generator: tests.helpers.servers\n"
            "Root-Is-Purelib: true\n"
            "Tag: py3-none-any\n"
        ),
    }
    record = io.StringIO()
    rows = csv.writer(record, lineterminator="\n")
    for path, text in files.items():
        data = text.encode()
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
        rows.writerow([path, f"sha256={digest.decode()}", len(data)])
    rows.writerow([f"{info}/RECORD", "", ""])
    files[f"{info}/RECORD"] = record.getvalue()
    wheel = folder / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


# S3 ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Server:
    """A running moto S3 and the IAM access key it accepts (any other is refused)."""

    url: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    def client(self, secret_key: str | None = None) -> S3Client:
        """A boto3 S3 client for it, path-style, signing with this key (or `secret_key`)."""
        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )


EVERYTHING = json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
)


@asynccontextmanager
async def moto_server() -> AsyncIterator[S3Server]:
    """moto's server, that checks every request's SigV4 signature and IAM permissions: an
    IAM user with an access key allowed everything is made while moto still lets all in,
    then `/moto-api/reset-auth` 0 turns authentication on for all later requests."""
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "moto.server", "--host", "127.0.0.1", "--port", str(port)]
    # Path-style only: a Host such as bravo.localhost names no bucket "bravo"
    ignore_subdomains = {"S3_IGNORE_SUBDOMAIN_BUCKETNAME": "true"}
    async with serving("moto", command, url + "/moto-api/", ignore_subdomains):
        access_key, secret_key = await trio.to_thread.run_sync(_make_user, url)
        async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
            response = await client.post(url + "/moto-api/reset-auth", content=b"0")
            response.raise_for_status()
        yield S3Server(url, access_key, secret_key)


def _make_user(url: str) -> tuple[str, str]:
    """An IAM user allowed everything, and its new access key (id, secret)."""
    iam = boto3.client(
        "iam",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="setup",
        aws_secret_access_key="setup",
    )
    iam.create_user(UserName="mesh")
    iam.put_user_policy(UserName="mesh", PolicyName="everything", PolicyDocument=EVERYTHING)
    key = iam.create_access_key(UserName="mesh")["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]
