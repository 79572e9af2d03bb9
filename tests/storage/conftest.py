"""A real S3-protocol server on loopback (moto's server mode), reached through s3fs as production code is."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator

import pytest

ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """The endpoint URL of a moto S3 server for one test module; the AWS env variables point every client (and
    subprocess) at it until the module ends."""
    server_module = pytest.importorskip("moto.server")
    s3fs = pytest.importorskip("s3fs")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port(), verbose=False)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request otherwise
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in (*ENV, "AWS_ENDPOINT_URL")}
    os.environ.update(ENV, AWS_ENDPOINT_URL=endpoint)
    s3fs.S3FileSystem.clear_instance_cache()  # an instance made before would keep its old endpoint
    try:
        yield endpoint
    finally:
        server.stop()
        s3fs.S3FileSystem.clear_instance_cache()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def bucket(s3_endpoint, request) -> str:
    """A new, empty bucket for one test; its name is the test's."""
    import fsspec

    name = "t-" + "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:50].strip("-")
    fsspec.filesystem("s3").mkdir(name)
    return name
