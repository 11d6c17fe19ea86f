"""The floor for hosting a function: one Starlette route that reads the JSON body, calls the
function in the thread pool (as Shipyard runs a sync service) and returns its output.

    python bench/bare_service.py --port 9300
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_services import echo


async def invoke(request: Request) -> Response:
    data = orjson.loads(await request.body())
    output = await run_in_threadpool(echo, data)
    return Response(orjson.dumps({"object": "service.result", "service": "echo",
                                  "output": output}), media_type="application/json")


def build_app() -> Starlette:
    return Starlette(routes=[Route("/v1/services/echo/invoke", invoke, methods=["POST"])])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(build_app(), host=args.host, port=args.port, log_level="warning", loop="uvloop",
                http="httptools", access_log=False)


if __name__ == "__main__":
    main()
