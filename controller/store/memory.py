"""``InMemoryStore``: the ``Store`` contract over dicts, for the simulator and unit tests."""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

from common.errors import AlreadyExists, NotFound, PermanentError
from common.types import (
    ArtifactManifest,
    AssignmentAck,
    AssignmentPlan,
    BlockAccuracy,
    BlockProfile,
    BootstrapToken,
    CallOverhead,
    CutPoint,
    Device,
    DeviceProfileReport,
    HardwareProfile,
    LinkMeasurement,
    Model,
    ModelVariant,
    PolicyApply,
    ProfileReport,
    ProfileRequestRecord,
    RejectedVariant,
    ReportedState,
    ServedSegment,
    TelemetryRecord,
)
from controller.store import _rules
from controller.store.base import ApplyOutcome, PlannedAssignment, Store


@dataclass(slots=True)
class _Telemetry:
    by_sequence: dict[int, TelemetryRecord] = field(default_factory=dict)
    sequences: list[int] = field(default_factory=list)  # sorted, for range queries


class InMemoryStore(Store):
    """Thread-safe; every method holds one lock for its whole duration, which makes it one transaction."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._closed = False
        self._tokens: dict[str, BootstrapToken] = {}  # by token_id, in creation order
        self._token_hashes: dict[str, str] = {}  # token_hash -> token_id
        self._devices: dict[str, Device] = {}
        self._credentials: dict[str, str] = {}
        self._telemetry: dict[str, _Telemetry] = {}
        self._models: dict[str, Model] = {}  # as stored: class_profiles are computed on read
        self._profile_requests: dict[tuple[str, str], ProfileRequestRecord] = {}  # (device, model)
        self._profile_reports: dict[tuple[str, str], DeviceProfileReport] = {}
        self._applies: list[PolicyApply] = []  # oldest first
        self._segments: dict[tuple[str, int, int, str], tuple[str, int]] = {}

    # --- bootstrap tokens -----------------------------------------------------------------------

    def create_token(
        self, token_id: str, token_hash: str, *, expires_at_ms: int, uses: int, description: str, now_ms: int
    ) -> BootstrapToken:
        with self._locked():
            if token_id in self._tokens:
                raise AlreadyExists(f"bootstrap token {token_id!r} already exists")
            if token_hash in self._token_hashes:
                raise AlreadyExists("a bootstrap token with this secret already exists")
            token = BootstrapToken(
                token_id=token_id,
                expires_at_ms=expires_at_ms,
                uses_total=uses,
                uses_left=uses,
                created_at_ms=now_ms,
                description=description,
            )
            self._tokens[token_id] = token
            self._token_hashes[token_hash] = token_id
            return token

    def list_tokens(self) -> list[BootstrapToken]:
        with self._locked():
            # Reverse creation order first so that, among equal timestamps, the later one comes first.
            return sorted(reversed(self._tokens.values()), key=lambda t: -t.created_at_ms)

    # --- devices --------------------------------------------------------------------------------

    def enroll_device(
        self, device_id: str, hardware: HardwareProfile, *, credential_hash: str, token_hash: str, now_ms: int
    ) -> tuple[Device, bool]:
        with self._locked():
            existing = self._devices.get(device_id)
            if existing is not None and _rules.is_repeat_enrollment(
                self._credentials.get(device_id), credential_hash
            ):
                return existing, False
            token_id = self._token_hashes.get(token_hash)
            token = _rules.check_token(self._tokens.get(token_id) if token_id else None, now_ms=now_ms)
            if existing is not None:
                raise AlreadyExists(f"device {device_id!r} already exists")
            device = _rules.new_device(device_id, _copy_hardware(hardware), now_ms=now_ms)
            self._tokens[token.token_id] = replace(token, uses_left=token.uses_left - 1)
            self._devices[device_id] = device
            self._credentials[device_id] = credential_hash
            self._telemetry[device_id] = _Telemetry()
            return device, True

    def get_device(self, device_id: str) -> Device:
        with self._locked():
            return self._device(device_id)

    def list_devices(self) -> list[Device]:
        with self._locked():
            return [self._devices[k] for k in sorted(self._devices)]

    def list_unacked(
        self, device_ids: Collection[str] | None = None, *, connected_only: bool = False
    ) -> list[Device]:
        with self._locked():
            if device_ids is None:
                candidates = list(self._devices)
            else:
                wanted = set(device_ids)
                candidates = [k for k in wanted if k in self._devices]
            return [
                self._devices[k]
                for k in sorted(candidates)
                if _rules.is_unacked(self._devices[k]) and (self._devices[k].connected or not connected_only)
            ]

    def get_credential_hash(self, device_id: str) -> str:
        with self._locked():
            self._device(device_id)
            return self._credentials[device_id]

    def device_connected(
        self,
        device_id: str,
        *,
        hardware: HardwareProfile,
        reported: ReportedState,
        records_dropped: int,
        now_ms: int,
        links: Sequence[LinkMeasurement] | None = None,
        endpoint: str | None = None,
    ) -> Device:
        return self._update(
            device_id,
            lambda d: _rules.apply_hello(
                d,
                hardware=_copy_hardware(hardware),
                reported=reported,
                records_dropped=records_dropped,
                now_ms=now_ms,
                links=None if links is None else tuple(links),
                endpoint=endpoint,
            ),
        )

    def device_disconnected(self, device_id: str, *, now_ms: int) -> Device:
        return self._update(device_id, lambda d: replace(d, connected=False, last_seen_ms=now_ms))

    def mark_all_disconnected(self) -> int:
        with self._locked():
            stale = [k for k, d in self._devices.items() if d.connected]
            for k in stale:
                self._devices[k] = replace(self._devices[k], connected=False)
            return len(stale)

    def touch_device(self, device_id: str, *, now_ms: int) -> None:
        self._update(device_id, lambda d: replace(d, last_seen_ms=now_ms))

    def set_links(self, device_id: str, links: Sequence[LinkMeasurement], *, now_ms: int) -> bool:
        with self._locked():
            before = self._device(device_id)
            ordered = tuple(sorted(links, key=lambda m: m.pool))
            if before.links == ordered:
                return False
            self._devices[device_id] = replace(before, links=ordered, last_seen_ms=now_ms)
            return True

    def set_assignment(
        self,
        device_id: str,
        *,
        model_name: str,
        variant: str,
        artifact_sha256: str,
        artifact_size_bytes: int,
        plan: AssignmentPlan | None = None,
        serve: Sequence[ServedSegment] = (),
        retry_failed: bool = True,
    ) -> tuple[Device, bool]:
        with self._locked():
            return self._set_assignment(
                PlannedAssignment(
                    device_id, model_name, variant, artifact_sha256, artifact_size_bytes, plan, tuple(serve)
                ),
                retry_failed=retry_failed,
            )

    def _set_assignment(self, a: PlannedAssignment, *, retry_failed: bool) -> tuple[Device, bool]:
        device, changed = _rules.apply_assignment(
            self._device(a.device_id),
            model_name=a.model_name,
            variant=a.variant,
            artifact_sha256=a.artifact_sha256,
            artifact_size_bytes=a.artifact_size_bytes,
            plan=a.plan,
            serve=a.serve,
            retry_failed=retry_failed,
        )
        self._devices[a.device_id] = device
        return device, changed

    # --- segment artifacts ----------------------------------------------------------------------

    def find_segment_artifact(
        self, source_sha256: str, start_cut: int, end_cut: int, method: str
    ) -> tuple[str, int] | None:
        with self._locked():
            return self._segments.get((source_sha256, start_cut, end_cut, method))

    def add_segment_artifact(
        self,
        model_name: str,
        source_sha256: str,
        start_cut: int,
        end_cut: int,
        method: str,
        sha256: str,
        size_bytes: int,
        *,
        now_ms: int,
    ) -> None:
        with self._locked():
            self._segments.setdefault((source_sha256, start_cut, end_cut, method), (sha256, size_bytes))

    # --- policies -------------------------------------------------------------------------------

    def apply_policies(self, record: PolicyApply, assignments: Sequence[PlannedAssignment]) -> ApplyOutcome:
        with self._locked():
            for a in assignments:  # all or nothing: check every device before changing any
                self._device(a.device_id)
            changed = tuple(
                d for d, c in (self._set_assignment(a, retry_failed=False) for a in assignments) if c
            )
            latest = self._applies[-1] if self._applies else None
            if not changed and latest is not None and latest.digest == record.digest:
                return ApplyOutcome(latest, (), recorded=False)
            stored = replace(record, id=len(self._applies) + 1, devices_changed=len(changed))
            self._applies.append(stored)
            return ApplyOutcome(stored, changed, recorded=True)

    def latest_policy_apply(self) -> PolicyApply | None:
        with self._locked():
            return self._applies[-1] if self._applies else None

    def list_policy_applies(self, *, limit: int = 50) -> list[PolicyApply]:
        _rules.check_limit(limit)
        with self._locked():
            return [replace(a, policies_json="") for a in reversed(self._applies[-limit:])]

    def record_ack(self, device_id: str, ack: AssignmentAck, *, now_ms: int) -> Device:
        return self._update(device_id, lambda d: _rules.apply_ack(d, ack, now_ms=now_ms))

    # --- telemetry ------------------------------------------------------------------------------

    def append_telemetry(self, device_id: str, records: Sequence[TelemetryRecord], *, now_ms: int) -> int:
        with self._locked():
            device = self._device(device_id)
            stored = self._telemetry[device_id]
            new = 0
            for record in records:
                if record.sequence in stored.by_sequence:
                    continue
                stored.by_sequence[record.sequence] = record
                bisect.insort(stored.sequences, record.sequence)
                new += 1
            last = max((r.sequence for r in records), default=device.last_sequence)
            self._devices[device_id] = replace(
                device,
                records_received=device.records_received + new,
                last_sequence=max(device.last_sequence, last),
                last_seen_ms=now_ms,
            )
            return new

    def list_telemetry(
        self, device_id: str, *, after_sequence: int = 0, limit: int = 1000
    ) -> list[TelemetryRecord]:
        _rules.check_limit(limit)
        with self._locked():
            self._device(device_id)
            stored = self._telemetry[device_id]
            start = bisect.bisect_right(stored.sequences, after_sequence)
            return [stored.by_sequence[s] for s in stored.sequences[start : start + limit]]

    def latest_telemetry(self, device_id: str, *, limit: int) -> list[TelemetryRecord]:
        _rules.check_limit(limit)
        with self._locked():
            self._device(device_id)
            stored = self._telemetry[device_id]
            return [stored.by_sequence[s] for s in stored.sequences[-limit:]] if limit else []

    # --- models ---------------------------------------------------------------------------------

    def add_model_variant(self, name: str, variant: ModelVariant, *, now_ms: int) -> tuple[Model, bool]:
        with self._locked():
            model = self._models.get(name) or Model(name=name, created_at_ms=now_ms)
            existing = model.variant(variant.variant)
            if existing is not None:
                if existing.sha256 == variant.sha256:
                    return self._read_model(name), False
                raise _rules.variant_conflict(
                    name, variant.variant, stored_sha256=existing.sha256, new_sha256=variant.sha256
                )
            variants = (*model.variants, replace(variant, created_at_ms=now_ms))
            model = replace(model, variants=tuple(sorted(variants, key=lambda v: v.variant)))
            self._models[name] = model
            return self._read_model(name), True

    def add_built_variants(
        self,
        name: str,
        variants: Sequence[ModelVariant],
        rejected: Sequence[RejectedVariant],
        *,
        now_ms: int,
        cut_points: Sequence[CutPoint] | None = None,
        block_profiles: Sequence[BlockProfile] | None = None,
        block_accuracy: Sequence[BlockAccuracy] | None = None,
        profile_inputs: ArtifactManifest | None = None,
        eval_data: ArtifactManifest | None = None,
        call_overhead: Sequence[CallOverhead] | None = None,
    ) -> Model:
        with self._locked():
            model = self._models.get(name)
            if model is None:
                raise NotFound(f"model {name!r} not found")
            added: dict[str, ModelVariant] = {v.variant: v for v in model.variants}
            for variant in variants:  # built aside and stored only when all are valid: all or nothing
                existing = added.get(variant.variant)
                if existing is None:
                    added[variant.variant] = replace(variant, created_at_ms=now_ms)
                elif existing.sha256 != variant.sha256:
                    raise _rules.variant_conflict(
                        name, variant.variant, stored_sha256=existing.sha256, new_sha256=variant.sha256
                    )
                else:  # the same bytes: only the measurements are new
                    added[variant.variant] = replace(
                        existing,
                        precision=variant.precision,
                        method=variant.method,
                        latency_b1_ms=variant.latency_b1_ms,
                        latency_b32_ms=variant.latency_b32_ms,
                        accuracy=variant.accuracy,
                        agreement=variant.agreement,
                        cosine=variant.cosine,
                    )
            model = replace(
                model,
                variants=tuple(sorted(added.values(), key=lambda v: v.variant)),
                rejected=tuple(rejected),
                cut_points=model.cut_points if cut_points is None else tuple(cut_points),
                block_profiles=model.block_profiles if block_profiles is None else tuple(block_profiles),
                block_accuracy=model.block_accuracy if block_accuracy is None else tuple(block_accuracy),
                call_overhead=model.call_overhead if call_overhead is None else tuple(call_overhead),
            )
            if profile_inputs is not None:
                model = replace(
                    model,
                    profile_inputs_sha256=profile_inputs.sha256,
                    profile_inputs_size_bytes=profile_inputs.size_bytes,
                )
            if eval_data is not None:
                model = replace(
                    model, eval_data_sha256=eval_data.sha256, eval_data_size_bytes=eval_data.size_bytes
                )
            self._models[name] = model
            return self._read_model(name)

    def get_model(self, name: str) -> Model:
        with self._locked():
            return self._read_model(name)

    def list_models(self) -> list[Model]:
        with self._locked():
            return [self._read_model(k) for k in sorted(self._models)]

    # --- device profiles ------------------------------------------------------------------------

    def request_profiles(
        self,
        model_name: str,
        requests: Sequence[tuple[str, str]],
        *,
        batch_sizes: Sequence[int],
        runs: int,
        now_ms: int,
    ) -> list[ProfileRequestRecord]:
        with self._locked():
            self._read_model(model_name)
            used = {r.request_id for r in self._profile_requests.values()}
            records: list[ProfileRequestRecord] = []
            for device_id, request_id in requests:  # checked before anything is stored: all or nothing
                self._device(device_id)
                if request_id in used:
                    raise AlreadyExists(f"profile request id {request_id!r} is already in use")
                used.add(request_id)
                records.append(
                    ProfileRequestRecord(
                        device_id, model_name, request_id, tuple(batch_sizes), runs, requested_at_ms=now_ms
                    )
                )
            for record in records:
                self._profile_requests[(record.device_id, model_name)] = record
            return records

    def list_pending_profile_requests(
        self, device_ids: Collection[str] | None = None
    ) -> list[ProfileRequestRecord]:
        with self._locked():
            wanted = None if device_ids is None else set(device_ids)
            return [
                r
                for _, r in sorted(self._profile_requests.items())
                if r.pending and (wanted is None or r.device_id in wanted)
            ]

    def record_profile_report(
        self, device_id: str, report: ProfileReport, *, now_ms: int
    ) -> ProfileRequestRecord:
        with self._locked():
            device = self._device(device_id)
            self._read_model(report.model_name)
            key = (device_id, report.model_name)
            request = _rules.check_profile_report(device_id, report, self._profile_requests.get(key))
            if request.pending:
                request = replace(request, completed_at_ms=now_ms)
                self._profile_requests[key] = request
            self._profile_reports[key] = DeviceProfileReport(
                device_id, device.hardware.hardware_class, now_ms, report
            )
            return request

    def list_profile_reports(self, model_name: str) -> list[DeviceProfileReport]:
        with self._locked():
            self._read_model(model_name)
            return self._reports(model_name)

    # --- lifecycle ------------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._closed = True

    # --- helpers --------------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock:
            if self._closed:
                raise PermanentError("store is closed")
            yield

    def _device(self, device_id: str) -> Device:
        device = self._devices.get(device_id)
        if device is None:
            raise _rules.device_not_found(device_id)
        return device

    def _update(self, device_id: str, change: Callable[[Device], Device]) -> Device:
        with self._locked():
            updated = change(self._device(device_id))
            self._devices[device_id] = updated
            return updated

    def _read_model(self, name: str) -> Model:
        model = self._models.get(name)
        if model is None:
            raise NotFound(f"model {name!r} not found")
        reports = self._reports(name)
        if not reports:
            return model
        return replace(
            model,
            class_profiles=_rules.class_profiles(reports, model.block_profiles),
            class_call_overhead=_rules.class_call_overhead(reports),
        )

    def _reports(self, model_name: str) -> list[DeviceProfileReport]:
        return [r for (_, model), r in sorted(self._profile_reports.items()) if model == model_name]


def _copy_hardware(hardware: HardwareProfile) -> HardwareProfile:
    # The caller keeps a reference to its labels mapping; a later mutation must not rewrite the registry.
    return replace(hardware, labels=dict(hardware.labels))
