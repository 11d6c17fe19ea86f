"""The OpenAI-compatible Files and Batch APIs (the official SDK's `client.files` and
`client.batches` work unchanged).

```
POST   /v1/files                    multipart: file, purpose=batch
GET    /v1/files                    ?purpose=&limit=&after=&order=
GET    /v1/files/{file_id}
GET    /v1/files/{file_id}/content  the bytes (streamed from disk)
DELETE /v1/files/{file_id}
POST   /v1/batches                  {"input_file_id", "endpoint", "completion_window", ...}
GET    /v1/batches                  ?limit=&after=
GET    /v1/batches/{batch_id}
POST   /v1/batches/{batch_id}/cancel
```

Everything is scoped to the caller's tenant; another tenant's file or batch is a 404.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import FileResponse, Response

from shipyard.errors import Conflict, InvalidRequest, PayloadTooLarge
from shipyard.gateway.admin_routes import acting_tenant, store_param
from shipyard.gateway.http import json_response, read_json
from shipyard.gateway.runtime import Gateway
from shipyard.gateway.scopes import ScopedRoute

__all__ = ["batch_routes"]

_FORM_OVERHEAD = 64 * 1024  # multipart boundaries and the other fields


def _limit(request: Request, default: int, most: int) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= most:
        raise InvalidRequest(f"Query parameter 'limit' is {raw!r}; use 1 to {most}.",
                             param="limit")
    return value


def _page(data: list[dict[str, Any]], more: bool) -> dict[str, Any]:
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": more}


async def _chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    while block := await upload.read(1 << 20):
        yield block


class BatchRoutes:
    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway

    # -- files ------------------------------------------------------------------------------
    async def upload(self, request: Request) -> Response:
        principal = await self.gw.authorize(request, "inference")
        store = self.gw.files
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and (
                int(declared) > store.max_bytes + _FORM_OVERHEAD):
            raise PayloadTooLarge(f"The upload is {int(declared)} bytes; files may be at most "
                                  f"{store.max_bytes} bytes (batches.max_file_bytes). Split "
                                  "it into smaller files.")
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise InvalidRequest("Upload a file as multipart/form-data with the fields 'file' "
                                 "and 'purpose' (the OpenAI SDK's files.create does).",
                                 param="file")
        async with request.form(max_files=1, max_fields=16) as form:
            upload, purpose = form.get("file"), form.get("purpose")
            if not isinstance(upload, UploadFile):
                raise InvalidRequest("The form has no file in field 'file'; send the file "
                                     "there.", param="file")
            if not isinstance(purpose, str) or not purpose:
                raise InvalidRequest("The form has no 'purpose'; send purpose=batch for a "
                                     "Batch API input file.", param="purpose")
            saved = await store.save(tenant_id=principal.tenant_id, purpose=purpose,
                                     filename=upload.filename or "upload.jsonl",
                                     chunks=_chunks(upload))
        return json_response(saved.public())

    async def list_files(self, request: Request) -> Response:
        principal = await self.gw.authorize(request, "inference")
        tenant = acting_tenant(principal, request)
        found, more = await asyncio.to_thread(
            self.gw.files.list, tenant_id=tenant, purpose=store_param(request, "purpose"),
            limit=_limit(request, 100, 10_000), after=store_param(request, "after"),
            order=request.query_params.get("order", "desc"))
        return json_response(_page([f.public() for f in found], more))

    async def get_file(self, request: Request) -> Response:
        principal = await self.gw.authorize(request, "inference")
        found = await asyncio.to_thread(self.gw.files.get, request.path_params["file_id"],
                                        tenant_id=acting_tenant(principal, request))
        return json_response(found.public())

    async def content(self, request: Request) -> Response:
        principal = await self.gw.authorize(request, "inference")
        found = await asyncio.to_thread(self.gw.files.get, request.path_params["file_id"],
                                        tenant_id=acting_tenant(principal, request))
        return FileResponse(self.gw.files.path_of(found), media_type="application/jsonl",
                            filename=found.filename)

    async def delete_file(self, request: Request) -> Response:
        principal = await self.gw.authorize(request, "inference")
        tenant = acting_tenant(principal, request)
        file_id = request.path_params["file_id"]
        await asyncio.to_thread(self.gw.files.get, file_id, tenant_id=tenant)
        batch = await asyncio.to_thread(self.gw.batches.reading, file_id)
        if batch is not None:
            raise Conflict(f"File '{file_id}' is the input of batch '{batch.id}', which is "
                               f"{batch.status}; cancel the batch or wait for it to end, then "
                               "delete the file.", param="file_id")
        gone = await asyncio.to_thread(self.gw.files.delete, file_id, tenant_id=tenant)
        return json_response({"id": gone.id, "object": "file", "deleted": True})

    # -- batches ----------------------------------------------------------------------------
    async def create_batch(self, request: Request) -> Response:
        gw = self.gw
        gw.refuse_if_draining()
        principal = await gw.authorize(request, "inference")
        body, _ = await read_json(request, gw.config.server.max_body_bytes,
                                  max_depth=gw.config.server.max_json_depth)
        for name in ("input_file_id", "endpoint", "completion_window"):
            if not isinstance(body.get(name), str):
                raise InvalidRequest(f"'{name}' is missing or not a string; a batch needs "
                                     "input_file_id, endpoint and completion_window.",
                                     param=name)
        unknown = set(body) - {"input_file_id", "endpoint", "completion_window", "metadata",
                               "output_expires_after"}
        if unknown:
            raise InvalidRequest(f"Unknown field(s) {', '.join(sorted(unknown))}; a batch "
                                 "takes input_file_id, endpoint, completion_window and "
                                 "metadata.", param=sorted(unknown)[0])
        batch = await asyncio.to_thread(
            gw.batches.create, principal, input_file_id=body["input_file_id"],
            endpoint=body["endpoint"], completion_window=body["completion_window"],
            metadata=body.get("metadata"))
        return json_response(batch.public())

    async def list_batches(self, request: Request) -> Response:
        principal = await self.gw.authorize(request, "inference")
        found, more = await asyncio.to_thread(
            self.gw.batches.list_batches, tenant_id=acting_tenant(principal, request),
            limit=_limit(request, 20, 100), after=store_param(request, "after"))
        return json_response(_page([b.public() for b in found], more))

    async def get_batch(self, request: Request) -> Response:
        principal = await self.gw.authorize(request, "inference")
        batch = await asyncio.to_thread(self.gw.batches.get, request.path_params["batch_id"],
                                        tenant_id=acting_tenant(principal, request))
        return json_response(batch.public())

    async def cancel_batch(self, request: Request) -> Response:
        principal = await self.gw.authorize(request, "inference")
        batch = await asyncio.to_thread(self.gw.batches.cancel,
                                        request.path_params["batch_id"],
                                        tenant_id=acting_tenant(principal, request))
        return json_response(batch.public())


def batch_routes(gateway: Gateway) -> list[ScopedRoute]:
    routes = BatchRoutes(gateway)
    return [
        ScopedRoute("/v1/files", routes.upload, methods=["POST"], scope="inference"),
        ScopedRoute("/v1/files", routes.list_files, methods=["GET"], scope="inference"),
        ScopedRoute("/v1/files/{file_id}", routes.get_file, methods=["GET"], scope="inference"),
        ScopedRoute("/v1/files/{file_id}", routes.delete_file, methods=["DELETE"],
                    scope="inference"),
        ScopedRoute("/v1/files/{file_id}/content", routes.content, methods=["GET"],
                    scope="inference"),
        ScopedRoute("/v1/batches", routes.create_batch, methods=["POST"], scope="inference"),
        ScopedRoute("/v1/batches", routes.list_batches, methods=["GET"], scope="inference"),
        ScopedRoute("/v1/batches/{batch_id}", routes.get_batch, methods=["GET"],
                    scope="inference"),
        ScopedRoute("/v1/batches/{batch_id}/cancel", routes.cancel_batch, methods=["POST"],
                    scope="inference"),
    ]
