"""AdminService: what fleetctl calls. Plain functions in controller.service do the work."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from common import serde
from common.errors import InvalidArgument, NotFound
from common.types import (
    ArtifactManifest,
    DeviceLatency,
    ImportModelHeader,
    ImportProgress,
    Model,
    ModelVariant,
    RejectedVariant,
    TensorSpec,
    validate_name,
)
from controller import manifests
from controller.api.errors import Context, streaming, unary
from controller.api.policy_api import PolicyRpcs
from controller.artifacts import ArtifactStore, Upload
from controller.hub import Db, Hub
from controller.onnx_check import inspect_onnx
from controller.service import enrollment, fleet, latency, profiles
from controller.service.clock import Clock
from controller.service.evaluation import SegmentEvaluator
from controller.service.segments import SegmentBuilder
from controller.store.base import Store
from controller.toolchain.evaldata import LABELS, EvalData, load_eval_data
from controller.toolchain.model_profile import ModelProfile, profile_model
from controller.toolchain.variants import VariantResult, build_variants, check_precisions

log = logging.getLogger(__name__)


class AdminApi(PolicyRpcs, serde.AdminServiceServicer):
    def __init__(
        self,
        db: Db,
        hub: Hub,
        artifacts: ArtifactStore,
        clock: Clock,
        *,
        max_model_bytes: int,
        policy_lock: asyncio.Lock | None = None,
        segments: SegmentBuilder | None = None,
    ) -> None:
        self._db = db
        self._hub = hub
        self._artifacts = artifacts
        self._clock = clock
        self._max_model_bytes = max_model_bytes
        # Held from storing an import's bytes to registering them (or discarding them on failure), so a
        # failed import cannot discard bytes that a concurrent import of the same content is registering.
        self._import_lock = asyncio.Lock()
        # Applies (and the controller's re-plans) one at a time: each plans from what the last wrote.
        self._policy_lock = policy_lock or asyncio.Lock()
        self._segments = segments or SegmentBuilder(db, artifacts, clock)
        self._evaluator = SegmentEvaluator(artifacts, workdir=artifacts.tmp_dir)

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
    async def GetDeviceLatency(self, request: Any, context: Context) -> Any:
        device_id, window = serde.get_device_latency_request_from_pb(request)

        def read(store: Store) -> DeviceLatency:
            device = store.get_device(device_id)
            return latency.summarize(device, store.latest_telemetry(device_id, limit=window), window=window)

        return serde.device_latency_to_pb(await self._db.run(read, self._db.store))

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
        if sha256 not in _referenced(models):
            await asyncio.to_thread(self._artifacts.discard, sha256)

    @unary
    async def GetArtifactManifest(self, request: Any, context: Context) -> Any:
        sha256 = serde.get_artifact_manifest_request_from_pb(request)
        manifest = await asyncio.to_thread(self._artifacts.read_manifest, sha256)
        if manifest is None:
            raise NotFound(f"artifact {sha256} has no manifest")
        return serde.artifact_manifest_doc_to_pb(manifest)

    @unary
    async def EvaluateSegments(self, request: Any, context: Context) -> Any:
        """The exact quality of a segment mix, measured in a worker thread (building segments and
        running the eval data take seconds to minutes; the store thread only reads the model)."""
        model_name, segments = serde.evaluate_segments_request_from_pb(request)
        model = await self._db.run(self._db.store.get_model, model_name)
        result = await asyncio.to_thread(self._evaluator.evaluate, model, segments)
        return serde.evaluate_segments_response_to_pb(result)

    @unary
    async def RequestProfile(self, request: Any, context: Context) -> Any:
        model_name, device_ids, hardware_class, runs = serde.request_profile_request_from_pb(request)
        records = await self._db.run(
            profiles.request_profile,
            self._db.store,
            model_name,
            device_ids=device_ids,
            hardware_class=hardware_class,
            runs=runs,
            now_ms=self._clock.now_ms(),
        )
        for record in records:  # connected devices get theirs now; the others on hello
            await self._hub.kick_profiles(record.device_id)
        return serde.request_profile_response_to_pb(model_name, records)

    @unary
    async def GetModel(self, request: Any, context: Context) -> Any:
        name = serde.get_model_request_from_pb(request)
        return serde.model_to_pb(await self._db.run(self._db.store.get_model, name))

    @streaming
    async def ImportModel(self, request_iterator: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
        """Spool the upload to a temporary file (hashing it on the way), validate it, and only then add it
        to the stores. File I/O, hashing, ONNX checks and variant builds run in worker threads: neither
        the event loop nor the store thread (every device's hello, ack and heartbeat) waits for a 1 GiB
        import. With precisions beyond fp32, streams the build's progress and registers every accepted
        variant (named after its precision) in one store transaction; the last event is the model."""
        header: ImportModelHeader | None = None
        upload: Upload | None = None
        eval_upload: Upload | None = None
        try:
            async for pb in request_iterator:
                part = serde.import_model_request_from_pb(pb)
                if isinstance(part, ImportModelHeader):
                    if header is not None:
                        raise InvalidArgument("import: the header was sent twice")
                    self._check_header(part)
                    header = part
                    upload = self._artifacts.open_upload(max_bytes=self._max_model_bytes)
                    continue
                if upload is None:
                    raise InvalidArgument(
                        "import: the first message must be the header (name, variant, size)"
                    )
                if isinstance(part, serde.EvalDataChunk):
                    if not _builds(header):
                        raise InvalidArgument("import: eval data was sent but no precision to build")
                    if eval_upload is None:
                        eval_upload = self._artifacts.open_upload(
                            max_bytes=self._max_model_bytes, what="eval data"
                        )
                    await asyncio.to_thread(eval_upload.write, part.data)
                    continue
                if eval_upload is not None:
                    raise InvalidArgument("import: model bytes arrived after the eval data")
                await asyncio.to_thread(upload.write, part)
            if header is None or upload is None:
                raise InvalidArgument("import: no header received")
            if header.size_bytes and upload.size != header.size_bytes:
                raise InvalidArgument(
                    f"import: header announced {header.size_bytes} bytes but {upload.size} arrived"
                )
            sha256, size = await asyncio.to_thread(upload.finish)
            inputs, outputs = await asyncio.to_thread(inspect_onnx, upload.path)
            eval_data: EvalData | None = None
            if _builds(header):
                if eval_upload is None:
                    raise InvalidArgument("import: building precisions needs eval data, but none arrived")
                if eval_upload.size != header.eval_data_size_bytes:
                    raise InvalidArgument(
                        f"import: header announced {header.eval_data_size_bytes} bytes of eval data "
                        f"but {eval_upload.size} arrived"
                    )
                await asyncio.to_thread(eval_upload.finish)
                eval_data = await asyncio.to_thread(
                    load_eval_data, eval_upload.path, inputs, outputs, where="eval data"
                )
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
                recorded: list[tuple[str, bytes | None]] = []
                try:
                    await self._record_manifest(header.name, variant, recorded)
                    model = await self._db.run(
                        fleet.register_variant,
                        self._db.store,
                        header.name,
                        variant,
                        now_ms=self._clock.now_ms(),
                    )
                except BaseException:  # also a cancelled call: only the store decides what is referenced
                    await self._restore_manifests(recorded)
                    await self._discard_if_unreferenced(sha256)
                    raise
            # The fp32 artifact is registered (referenced) now, so the long build runs without the lock:
            # other imports are not held up behind it, and none of them can discard its input.
            if eval_data is not None and eval_upload is not None:
                # The eval data is kept too (adopted with the build's artifacts, under the lock), so
                # the controller can later measure segment mixes exactly on the same rows.
                async for item in self._build(header, sha256, eval_data, eval_upload, outputs):
                    if isinstance(item, Model):
                        model = item
                    else:
                        yield serde.import_model_event_to_pb(item)
            yield serde.import_model_event_to_pb(model)
        finally:
            # close + unlink of local temp files: quick, and it must run when cancelled
            if upload is not None:
                upload.discard()
            if eval_upload is not None:
                eval_upload.discard()

    def _check_header(self, header: ImportModelHeader) -> None:
        validate_name("model name", header.name)
        validate_name("variant", header.variant or "fp32")
        for what, value in (("model", header.size_bytes), ("eval data", header.eval_data_size_bytes)):
            if value > self._max_model_bytes:
                raise InvalidArgument(
                    f"{what} of {value} bytes is larger than the {self._max_model_bytes}-byte import limit"
                )
        if header.precisions:
            check_precisions(header.precisions)
        if _builds(header):
            if (header.variant or "fp32") != "fp32":
                raise InvalidArgument(
                    f"import: variant {header.variant!r} cannot be combined with precisions: built "
                    "variants are named after their precision and the upload is registered as fp32"
                )
            if not header.eval_data_size_bytes:
                raise InvalidArgument(
                    "import: building precisions "
                    f"{', '.join(p for p in header.precisions if p != 'fp32')} needs eval data "
                    "(an .npz with one array per model input, plus optional 'labels')"
                )

    async def _build(
        self,
        header: ImportModelHeader,
        sha256: str,
        eval_data: EvalData,
        eval_upload: Upload,
        outputs: tuple[TensorSpec, ...],
    ) -> AsyncIterator[ImportProgress | Model]:
        """Build the variants of the stored fp32 artifact (progress as it comes), store the accepted ones,
        the block artifacts, the profile inputs and the eval data, and register them with the
        rejections, cut points, block profiles and block accuracy in one transaction; the last item is
        the model. On any failure no built artifact or registration is left (the fp32 registration
        stays: it is valid). The build itself runs without the import lock; storing and registering
        take it."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[ImportProgress] = asyncio.Queue(maxsize=_PROGRESS_QUEUE)

        def offer(event: ImportProgress) -> None:  # on the loop
            if queue.full():
                queue.get_nowait()  # progress is advisory: a slow client sees the newest steps
            queue.put_nowait(event)

        def progress(step: int, total: int, message: str) -> None:  # in the worker thread
            loop.call_soon_threadsafe(offer, ImportProgress(step, total, message))

        precisions = ["fp32", *(p for p in check_precisions(header.precisions) if p != "fp32")]
        build = asyncio.ensure_future(
            asyncio.to_thread(
                _build_and_profile,
                self._artifacts.path(sha256),
                eval_data,
                precisions,
                self._artifacts.tmp_dir,
                progress,
                outputs,
            )
        )
        stored: list[str] = []
        recorded: list[tuple[str, bytes | None]] = []
        try:
            while not build.done():
                getter = asyncio.ensure_future(queue.get())
                try:
                    await asyncio.wait({getter, build}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    if not getter.done():
                        getter.cancel()
                if getter.done() and not getter.cancelled():
                    yield getter.result()
            while not queue.empty():  # progress posted before the build returned
                yield queue.get_nowait()
            results, profile = build.result()
            async with self._import_lock:  # storing and registering: short, and exclusive
                try:
                    variants: list[ModelVariant] = []
                    for r in results:
                        if not r.accepted or r.onnx_bytes is None:
                            continue
                        if r.precision == "fp32":
                            built = await asyncio.to_thread(self._describe_artifact, sha256)
                        else:
                            built_sha, _ = await asyncio.to_thread(
                                self._artifacts.put_stream, [r.onnx_bytes], max_bytes=self._max_model_bytes
                            )
                            stored.append(built_sha)
                            built = await asyncio.to_thread(self._describe_artifact, built_sha)
                        variants.append(_measured(built, r, now_ms=self._clock.now_ms()))
                    rejected = [
                        RejectedVariant(r.precision, r.method, r.reason) for r in results if not r.accepted
                    ]
                    for v in variants:  # manifests first: a registered variant always has one
                        await self._record_manifest(header.name, v, recorded)
                    await self._store_blocks(header.name, profile, stored, recorded)
                    inputs_ref = await self._store_data(
                        header.name, "profile_inputs", profile.profile_inputs, stored, recorded
                    )
                    eval_ref = await self._adopt_eval_data(
                        header.name, eval_upload, eval_data, stored, recorded
                    )
                    model = await self._db.run(
                        self._db.store.add_built_variants,
                        header.name,
                        variants,
                        rejected,
                        now_ms=self._clock.now_ms(),
                        cut_points=profile.cut_points,
                        block_profiles=profile.block_profiles,
                        block_accuracy=profile.block_accuracy,
                        call_overhead=profile.call_overhead,
                        profile_inputs=inputs_ref,
                        eval_data=eval_ref,
                    )
                    log.info(
                        "model=%s built %s; rejected %s; %d cut points, %d block profiles, %d block "
                        "artifacts, %d block accuracies",
                        header.name,
                        ", ".join(v.variant for v in variants) or "nothing",
                        ", ".join(f"{r.precision}/{r.method}" for r in rejected) or "nothing",
                        len(profile.cut_points),
                        len(profile.block_profiles),
                        len({a.sha256 for a in profile.block_artifacts}),
                        len(profile.block_accuracy),
                    )
                    stored.clear()  # registered: referenced from now on
                    recorded.clear()
                finally:
                    await self._restore_manifests(recorded)
                    for built_sha in stored:
                        await self._discard_if_unreferenced(built_sha)
            yield model
        finally:
            if not build.done():  # cancelled: the thread cannot be stopped, but its work dir must go
                await asyncio.wait({build})

    async def _record_manifest(
        self, model: str, variant: ModelVariant, recorded: list[tuple[str, bytes | None]]
    ) -> None:
        """Write the manifest recording this registration (before registering it); appends what it
        replaced to ``recorded`` for ``_restore_manifests``. Runs under the import lock."""
        previous = await asyncio.to_thread(
            manifests.record_registration, self._artifacts, model, variant, now_ms=self._clock.now_ms()
        )
        recorded.append((variant.sha256, previous))

    async def _restore_manifests(self, recorded: list[tuple[str, bytes | None]]) -> None:
        """Undo ``_record_manifest`` after a failed registration, newest first (best effort: a
        manifest that records a registration the store lacks is harmless)."""
        for sha256, previous in reversed(recorded):
            try:
                await asyncio.to_thread(self._artifacts.restore_manifest, sha256, previous)
            except OSError:
                log.warning("could not restore the manifest of %s", sha256[:12], exc_info=True)
        recorded.clear()

    async def _store_blocks(
        self,
        model: str,
        profile: ModelProfile,
        stored: list[str],
        recorded: list[tuple[str, bytes | None]],
    ) -> None:
        """Store every block artifact (each distinct sha256 once) and record each block in the manifest
        of its bytes. Runs under the import lock; ``stored``/``recorded`` as in ``_build``."""
        kept: set[str] = set()
        for block in profile.block_artifacts:
            if block.sha256 not in kept:
                sha, _ = await asyncio.to_thread(
                    self._artifacts.put_stream, [block.onnx_bytes], max_bytes=self._max_model_bytes
                )
                if sha != block.sha256:  # content addressing: the bytes are what the profile recorded
                    raise RuntimeError(f"block artifact stored as {sha}, expected {block.sha256}")
                stored.append(sha)
                kept.add(sha)
            previous = await asyncio.to_thread(
                manifests.record_segment,
                self._artifacts,
                model,
                sha256=block.sha256,
                precision=block.precision,
                method=block.method,
                start_cut=block.start_cut,
                end_cut=block.end_cut,
                source_sha256=profile.source_sha256,
                now_ms=self._clock.now_ms(),
            )
            recorded.append((block.sha256, previous))

    async def _store_data(
        self,
        model: str,
        kind: str,
        data: bytes,
        stored: list[str],
        recorded: list[tuple[str, bytes | None]],
    ) -> ArtifactManifest:
        """Store an ``.npz`` the build made (the profile inputs) with its manifest; under the lock."""
        sha, size = await asyncio.to_thread(
            self._artifacts.put_stream, [data], max_bytes=self._max_model_bytes
        )
        stored.append(sha)
        await self._record_data(model, kind, sha, _npz_arrays(data), recorded)
        return ArtifactManifest(sha, size)

    async def _adopt_eval_data(
        self,
        model: str,
        upload: Upload,
        eval_data: EvalData,
        stored: list[str],
        recorded: list[tuple[str, bytes | None]],
    ) -> ArtifactManifest:
        """Move the uploaded eval data into the store (no copy) with its manifest; under the lock."""
        sha, size = await asyncio.to_thread(self._artifacts.adopt, upload)
        stored.append(sha)
        arrays = dict(eval_data.inputs)
        if eval_data.labels is not None:
            arrays[LABELS] = eval_data.labels
        await self._record_data(model, "eval_data", sha, arrays, recorded)
        return ArtifactManifest(sha, size)

    async def _record_data(
        self,
        model: str,
        kind: str,
        sha256: str,
        arrays: dict[str, Any],
        recorded: list[tuple[str, bytes | None]],
    ) -> None:
        previous = await asyncio.to_thread(
            manifests.record_data,
            self._artifacts,
            model,
            sha256=sha256,
            kind=kind,
            arrays=arrays,
            now_ms=self._clock.now_ms(),
        )
        recorded.append((sha256, previous))

    def _describe_artifact(self, sha256: str) -> ModelVariant:
        path = self._artifacts.path(sha256)
        inputs, outputs = inspect_onnx(path)
        return ModelVariant(
            variant="", sha256=sha256, size_bytes=path.stat().st_size, inputs=inputs, outputs=outputs
        )


#: Progress events waiting for a slow client; older ones are dropped beyond this.
_PROGRESS_QUEUE = 64


def _build_and_profile(
    model_path: Path,
    eval_data: EvalData,
    precisions: list[str],
    workdir: Path,
    progress: Callable[[int, int, str], None],
    outputs: tuple[TensorSpec, ...],
) -> tuple[list[VariantResult], ModelProfile]:
    """The variant build, then the cut points, block profiles and block accuracy of every accepted
    precision (in a worker thread). Progress runs over both with one fixed total: the build's steps,
    one for the cut points, one per requested precision (a rejected one is reported as not profiled),
    one for the block accuracy."""
    extra = 2 + len(precisions)
    base = 0

    def build_progress(step: int, total: int, message: str) -> None:
        nonlocal base
        base = total
        progress(step, total + extra, message)

    results = build_variants(model_path, eval_data, precisions, workdir, progress=build_progress)
    methods: dict[str, str] = {}
    for r in results:
        if r.accepted and r.onnx_bytes is not None:
            methods.setdefault(r.precision, r.method)
    done = 0

    def profile_progress(step: int, total: int, message: str) -> None:
        nonlocal done
        done = step
        progress(base + step, base + extra, message)

    profile = profile_model(
        model_path.read_bytes(),
        eval_data,
        methods,
        outputs=outputs,
        workdir=workdir,
        progress=lambda step, total, message: (
            profile_progress(step, total, message) if step < total else None
        ),
    )
    for precision in (p for p in precisions if p not in methods):
        done += 1
        progress(base + done, base + extra, f"{precision}: no block profile (no accepted variant)")
    progress(base + extra, base + extra, f"block accuracy: {len(profile.block_accuracy)} entries")
    return results, profile


def _referenced(models: Iterable[Model]) -> set[str]:
    """Every artifact some model refers to: variants, block artifacts, profile inputs and eval data."""
    shas: set[str] = set()
    for m in models:
        shas.update(v.sha256 for v in m.variants)
        shas.update(b.artifact_sha256 for b in m.block_profiles if b.artifact_sha256)
        shas.update(s for s in (m.profile_inputs_sha256, m.eval_data_sha256) if s)
    return shas


def _npz_arrays(data: bytes) -> dict[str, Any]:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def _builds(header: ImportModelHeader | None) -> bool:
    """Whether the import asks for precisions beyond the uploaded fp32."""
    return header is not None and any(p != "fp32" for p in header.precisions)


def _measured(artifact: ModelVariant, r: VariantResult, *, now_ms: int) -> ModelVariant:
    return dataclasses.replace(
        artifact,
        variant=r.precision,
        created_at_ms=now_ms,
        precision=r.precision,
        method=r.method,
        latency_b1_ms=r.latency_ms.get(1, 0.0),
        latency_b32_ms=r.latency_ms.get(32, 0.0),
        accuracy=r.metrics.accuracy,
        agreement=r.metrics.agreement,
        cosine=r.metrics.cosine,
    )
