"""ControllerService: what agents call (enroll, the control stream, artifact download)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from common import limits, serde
from common.errors import EdgefleetError, InvalidArgument, NotFound, Unauthenticated
from common.types import ArtifactChunk, ArtifactManifest, Device
from controller.api.errors import Context, streaming, unary
from controller.artifacts import ArtifactStore
from controller.hub import Db, Hub, Session, ShuttingDown
from controller.service import enrollment
from controller.service.clock import Clock

log = logging.getLogger(__name__)

DEVICE_ID_KEY = "x-edgefleet-device-id"
AUTHORIZATION_KEY = "authorization"


class DeviceApi(serde.ControllerServiceServicer):
    def __init__(self, db: Db, hub: Hub, artifacts: ArtifactStore, clock: Clock) -> None:
        self._db = db
        self._hub = hub
        self._artifacts = artifacts
        self._clock = clock

    async def _authenticate(self, context: Context) -> Device:
        metadata = dict(context.invocation_metadata() or ())
        device_id = str(metadata.get(DEVICE_ID_KEY, ""))
        auth = str(metadata.get(AUTHORIZATION_KEY, ""))
        credential = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else ""
        if not device_id or not credential:
            raise Unauthenticated(
                f"missing {DEVICE_ID_KEY} or bearer {AUTHORIZATION_KEY} metadata", code="bad_credential"
            )
        return await self._db.run(enrollment.authenticate, self._db.store, device_id, credential)

    @unary
    async def Enroll(self, request: Any, context: Context) -> Any:
        token, hardware, requested_id, credential = serde.enroll_request_from_pb(request)
        identity = await self._db.run(
            enrollment.enroll,
            self._db.store,
            token=token,
            hardware=hardware,
            requested_device_id=requested_id,
            device_credential=credential,
            now_ms=self._clock.now_ms(),
        )
        return serde.enroll_response_to_pb(identity)

    async def Connect(self, request_iterator: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
        try:
            device = await self._authenticate(context)
            session = self._hub.open(device.id)
        except EdgefleetError as exc:
            await serde.abort_with_error_async(context, exc)
        reader = asyncio.create_task(self._read(request_iterator, session), name=f"read-{device.id}")
        try:
            while (message := await session.next()) is not None:
                yield serde.controller_message_to_pb(message)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            await self._hub.close(session)
        if isinstance(session.close_reason, EdgefleetError):
            await serde.abort_with_error_async(context, session.close_reason)

    async def _read(self, request_iterator: AsyncIterator[Any], session: Session) -> None:
        try:
            async for pb in request_iterator:
                await self._hub.handle(session, serde.agent_message_from_pb(pb))
            session.close()  # the agent half-closed its side
        except ShuttingDown as exc:
            session.close(exc)
        except EdgefleetError as exc:
            log.warning("device=%s stream refused: %s", session.device_id, exc)
            session.close(exc)
        except grpc.RpcError:
            session.close()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("device=%s stream failed", session.device_id)
            session.close(exc)

    @streaming
    async def FetchArtifact(self, request: Any, context: Context) -> AsyncIterator[Any]:
        await self._authenticate(context)
        sha256, offset = serde.fetch_artifact_request_from_pb(request)
        if not self._artifacts.exists(sha256):
            raise NotFound(f"artifact {sha256} not found")
        size = self._artifacts.size(sha256)
        if offset > size:
            raise InvalidArgument(f"offset {offset} is beyond the end of artifact {sha256} ({size} bytes)")
        manifest: ArtifactManifest | None = ArtifactManifest(sha256=sha256, size_bytes=size)
        position = offset
        chunks = self._artifacts.read_chunks(sha256, offset, limits.ARTIFACT_CHUNK_BYTES)
        while True:
            data = await asyncio.to_thread(next, chunks, None)
            if data is None:
                break
            yield serde.artifact_chunk_to_pb(ArtifactChunk(offset=position, data=data, manifest=manifest))
            manifest = None
            position += len(data)
        if manifest is not None:  # empty remainder: still tell the client the manifest
            yield serde.artifact_chunk_to_pb(ArtifactChunk(offset=position, data=b"", manifest=manifest))
