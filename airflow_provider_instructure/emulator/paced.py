"""A download response paced like one S3 object stream (the emulator's ``download_bandwidth``)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send


class PacedFile(Response):
    """Stream a file at no more than ``bandwidth`` bytes per second on this connection, the way
    one S3 object stream is capped (config ``download_bandwidth``).

    The file is sent in slices of about 1/20 s worth of bytes, each once the bytes up to its
    end are due, so the rate holds over the whole transfer without bursts of more than one
    slice.
    """

    def __init__(self, path: Path, bandwidth: float) -> None:
        super().__init__(status_code=200)
        self.path = path
        self.bandwidth = bandwidth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        size = self.path.stat().st_size
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-length", str(size).encode()),
                    (b"content-type", b"binary/octet-stream"),
                ],
            }
        )
        piece = max(4096, min(1 << 20, int(self.bandwidth / 20)))
        started = time.monotonic()
        sent = 0
        async with await anyio.open_file(self.path, "rb") as fh:
            while True:
                data = await fh.read(piece)
                if not data:
                    break
                sent += len(data)
                # A slice leaves when its last byte is due: the client never gets ahead of the cap.
                delay = started + sent / self.bandwidth - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await send({"type": "http.response.body", "body": data, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
