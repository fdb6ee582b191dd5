"""Serving a file the page opened itself (through ``RunFolder``: a regular file reached
without links): its bytes come from that open handle, never from its path again."""

from __future__ import annotations

import mimetypes
import os
from collections.abc import AsyncIterator
from typing import IO

from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse

CHUNK = 1 << 16


def handle_response(
    handle: IO[bytes], name: str, *, inline: bool, media_type: str | None = None
) -> StreamingResponse:
    """``handle``'s bytes as a response (closed when sent), as a download unless ``inline``."""
    size = os.fstat(handle.fileno()).st_size

    async def chunks() -> AsyncIterator[bytes]:
        try:
            while chunk := await run_in_threadpool(handle.read, CHUNK):
                yield chunk
        finally:
            handle.close()

    kind = media_type or mimetypes.guess_type(name)[0] or "application/octet-stream"
    headers = {"content-length": str(size)}
    if not inline:
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
        headers["content-disposition"] = f'attachment; filename="{safe}"'
    return StreamingResponse(chunks(), media_type=kind, headers=headers)
