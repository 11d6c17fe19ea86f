"""The floor for any gateway: a bare pass-through proxy in a few lines.

One Starlette route under uvicorn (one worker, uvloop, httptools) that forwards the request body
to the upstream with a pooled `aiohttp.ClientSession` (keep-alive `TCPConnector`), and returns
the upstream's status and body. No auth, no parsing, no tracing.

    python bench/bare_proxy.py --port 9200 --upstream http://127.0.0.1:9100
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def build_app(upstream: str) -> Starlette:
    target = upstream.rstrip("/") + "/v1/chat/completions"
    session: aiohttp.ClientSession | None = None

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        nonlocal session
        connector = aiohttp.TCPConnector(limit=256, keepalive_timeout=60)
        session = aiohttp.ClientSession(connector=connector)
        try:
            yield
        finally:
            await session.close()

    async def chat_completions(request: Request) -> Response:
        assert session is not None
        body = await request.body()
        async with session.post(
            target, data=body, headers={"content-type": "application/json"}
        ) as upstream_response:
            payload = await upstream_response.read()
            return Response(
                payload,
                status_code=upstream_response.status,
                media_type=upstream_response.content_type,
            )

    return Starlette(
        routes=[Route("/v1/chat/completions", chat_completions, methods=["POST"])],
        lifespan=lifespan,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:9100")
    args = parser.parse_args()
    uvicorn.run(
        build_app(args.upstream),
        host=args.host,
        port=args.port,
        workers=1,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
