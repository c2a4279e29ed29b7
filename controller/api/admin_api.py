"""AdminService: what fleetctl calls. Plain functions in controller.service do the work."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from common import serde
from common.errors import InvalidArgument
from common.types import ImportModelHeader, ModelVariant, validate_name
from controller.api.errors import Context, unary
from controller.artifacts import ArtifactStore, Upload
from controller.hub import Db, Hub
from controller.onnx_check import inspect_onnx
from controller.service import enrollment, fleet
from controller.service.clock import Clock

log = logging.getLogger(__name__)


class AdminApi(serde.AdminServiceServicer):
    def __init__(
        self, db: Db, hub: Hub, artifacts: ArtifactStore, clock: Clock, *, max_model_bytes: int
    ) -> None:
        self._db = db
        self._hub = hub
        self._artifacts = artifacts
        self._clock = clock
        self._max_model_bytes = max_model_bytes
        # Held from storing an import's bytes to registering them (or discarding them on failure), so a
        # failed import cannot discard bytes that a concurrent import of the same content is registering.
        self._import_lock = asyncio.Lock()

    @unary
    async def CreateToken(self, request: Any, context: Context) -> Any:
        ttl_s, uses, description = serde.create_token_request_from_pb(request)
        created = await self._db.run(
            enrollment.create_token,
            self._db.store,
            ttl_s=ttl_s,
            uses=uses,
            description=description,
            now_ms=self._clock.now_ms(),
        )
        return serde.create_token_response_to_pb(created)

    @unary
    async def ListDevices(self, request: Any, context: Context) -> Any:
        return serde.list_devices_response_to_pb(await self._db.run(self._db.store.list_devices))

    @unary
    async def GetDevice(self, request: Any, context: Context) -> Any:
        device_id = serde.get_device_request_from_pb(request)
        return serde.device_to_pb(await self._db.run(self._db.store.get_device, device_id))

    @unary
    async def ListModels(self, request: Any, context: Context) -> Any:
        return serde.list_models_response_to_pb(await self._db.run(self._db.store.list_models))

    @unary
    async def Assign(self, request: Any, context: Context) -> Any:
        device_id, model_name, variant = serde.assign_request_from_pb(request)
        result = await self._db.run(
            fleet.assign,
            self._db.store,
            device_id=device_id,
            model_name=model_name,
            variant=variant or "fp32",
        )
        if result.changed:
            await self._hub.kick(device_id)
        return serde.assign_response_to_pb(result)

    async def _discard_if_unreferenced(self, sha256: str) -> None:
        models = await self._db.run(self._db.store.list_models)
        if not any(v.sha256 == sha256 for m in models for v in m.variants):
            await asyncio.to_thread(self._artifacts.discard, sha256)

    @unary
    async def ImportModel(self, request_iterator: AsyncIterator[Any], context: Context) -> Any:
        """Spool the upload to a temporary file (hashing it on the way), validate it, and only then add it
        to the stores. File I/O, hashing and ONNX checks run in worker threads: neither the event loop nor
        the store thread (every device's hello, ack and heartbeat) waits for a 1 GiB import."""
        header: ImportModelHeader | None = None
        upload: Upload | None = None
        try:
            async for pb in request_iterator:
                part = serde.import_model_request_from_pb(pb)
                if isinstance(part, ImportModelHeader):
                    if header is not None:
                        raise InvalidArgument("import: the header was sent twice")
                    validate_name("model name", part.name)
                    validate_name("variant", part.variant or "fp32")
                    if part.size_bytes > self._max_model_bytes:
                        raise InvalidArgument(
                            f"model of {part.size_bytes} bytes is larger than the "
                            f"{self._max_model_bytes}-byte import limit"
                        )
                    header = part
                    upload = self._artifacts.open_upload(max_bytes=self._max_model_bytes)
                    continue
                if upload is None:
                    raise InvalidArgument(
                        "import: the first message must be the header (name, variant, size)"
                    )
                await asyncio.to_thread(upload.write, part)
            if header is None or upload is None:
                raise InvalidArgument("import: no header received")
            if header.size_bytes and upload.size != header.size_bytes:
                raise InvalidArgument(
                    f"import: header announced {header.size_bytes} bytes but {upload.size} arrived"
                )
            sha256, size = await asyncio.to_thread(upload.finish)
            inputs, outputs = await asyncio.to_thread(inspect_onnx, upload.path)
            variant = ModelVariant(
                variant=header.variant or "fp32",
                sha256=sha256,
                size_bytes=size,
                inputs=inputs,
                outputs=outputs,
                created_at_ms=self._clock.now_ms(),
            )
            async with self._import_lock:
                await asyncio.to_thread(self._artifacts.adopt, upload)
                try:
                    model = await self._db.run(
                        fleet.register_variant,
                        self._db.store,
                        header.name,
                        variant,
                        now_ms=self._clock.now_ms(),
                    )
                except BaseException:  # also a cancelled call: only the store decides what is referenced
                    await self._discard_if_unreferenced(sha256)
                    raise
            return serde.model_to_pb(model)
        finally:
            if upload is not None:
                upload.discard()  # close + unlink of a local temp file: quick, and it must run when cancelled
