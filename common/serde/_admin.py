"""admin.proto: tokens, devices, model import and assignment, profiles, and policies."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from edgefleet.v1 import admin_pb2 as admin_pb

from common.errors import InvalidArgument
from common.limits import (
    DEFAULT_LATENCY_WINDOW,
    MAX_EVALUATED_SEGMENTS,
    MAX_LATENCY_WINDOW,
    MAX_MODEL_BYTES,
    MAX_POLICY_BYTES,
    MAX_POLICY_FILES,
    MAX_POLICY_HISTORY,
    MAX_PROFILE_RUNS,
    MAX_PROFILED_DEVICES,
)
from common.serde._types import device_from_pb, device_to_pb, model_from_pb, model_to_pb
from common.serde._validate import (
    _at,
    _fail,
    _finite,
    _hardware_class,
    _latency,
    _name,
    _nonempty,
    _required_message,
    _sha256,
    _text,
)
from common.types import (
    DEFAULT_VARIANT,
    AssignmentChange,
    AssignResult,
    CreatedToken,
    Device,
    DeviceLatency,
    HopLatency,
    ImportModelHeader,
    ImportProgress,
    Model,
    PolicyApply,
    PolicyFile,
    ProfileRequestRecord,
    SegmentEvaluation,
    SegmentSpec,
)

#: Most precisions one import may ask for (there are four; repeats are dropped by the toolchain).
_MAX_PRECISIONS = 16

# --- admin.proto -------------------------------------------------------------------------------


def create_token_request_to_pb(
    ttl_seconds: int, uses: int, description: str = ""
) -> admin_pb.CreateTokenRequest:
    return admin_pb.CreateTokenRequest(ttl_seconds=ttl_seconds, uses=uses, description=description)


def create_token_request_from_pb(pb: admin_pb.CreateTokenRequest) -> tuple[int, int, str]:
    """``(ttl_seconds, uses, description)``; zeros are passed through (the service picks defaults)."""
    return pb.ttl_seconds, pb.uses, _text(pb.description)


def create_token_response_to_pb(t: CreatedToken) -> admin_pb.CreateTokenResponse:
    return admin_pb.CreateTokenResponse(
        token_id=t.token_id, token=t.token, expires_at_ms=t.expires_at_ms, uses=t.uses
    )


def create_token_response_from_pb(pb: admin_pb.CreateTokenResponse) -> CreatedToken:
    return CreatedToken(
        token_id=_nonempty("token_id", pb.token_id),
        token=_nonempty("token", pb.token),
        expires_at_ms=pb.expires_at_ms,
        uses=pb.uses,
    )


def list_devices_request_to_pb() -> admin_pb.ListDevicesRequest:
    return admin_pb.ListDevicesRequest()


def list_devices_response_to_pb(devices: Iterable[Device]) -> admin_pb.ListDevicesResponse:
    return admin_pb.ListDevicesResponse(devices=[device_to_pb(d) for d in devices])


def list_devices_response_from_pb(pb: admin_pb.ListDevicesResponse) -> tuple[Device, ...]:
    return tuple(device_from_pb(d, path=f"devices[{i}]") for i, d in enumerate(pb.devices))


def get_device_request_to_pb(device_id: str) -> admin_pb.GetDeviceRequest:
    return admin_pb.GetDeviceRequest(device_id=device_id)


def get_device_request_from_pb(pb: admin_pb.GetDeviceRequest) -> str:
    return _name("device_id", pb.device_id)


def import_model_header_to_pb(h: ImportModelHeader) -> admin_pb.ImportModelHeader:
    return admin_pb.ImportModelHeader(
        name=h.name,
        variant=h.variant,
        size_bytes=h.size_bytes,
        precisions=list(h.precisions),
        eval_data_size_bytes=h.eval_data_size_bytes,
    )


def import_model_header_from_pb(pb: admin_pb.ImportModelHeader, *, path: str = "header") -> ImportModelHeader:
    """An empty variant means ``DEFAULT_VARIANT``; size_bytes 0 means "not announced".

    Precisions are checked as names here; which precisions exist is the toolchain's business."""
    if pb.size_bytes > MAX_MODEL_BYTES:
        _fail(_at(path, "size_bytes"), f"{pb.size_bytes} bytes, at most {MAX_MODEL_BYTES}")
    if pb.eval_data_size_bytes > MAX_MODEL_BYTES:
        _fail(
            _at(path, "eval_data_size_bytes"), f"{pb.eval_data_size_bytes} bytes, at most {MAX_MODEL_BYTES}"
        )
    if len(pb.precisions) > _MAX_PRECISIONS:
        _fail(_at(path, "precisions"), f"{len(pb.precisions)} entries, at most {_MAX_PRECISIONS}")
    return ImportModelHeader(
        name=_name(_at(path, "name"), pb.name),
        variant=_name(_at(path, "variant"), pb.variant) if pb.variant else DEFAULT_VARIANT,
        size_bytes=pb.size_bytes,
        precisions=tuple(_name(_at(path, f"precisions[{i}]"), p) for i, p in enumerate(pb.precisions)),
        eval_data_size_bytes=pb.eval_data_size_bytes,
    )


@dataclass(frozen=True, slots=True)
class EvalDataChunk:
    """A chunk of an import's eval data (.npz), sent after all of the model's bytes."""

    data: bytes


def import_model_request_to_pb(
    item: ImportModelHeader | bytes | EvalDataChunk,
) -> admin_pb.ImportModelRequest:
    """The first message of the upload carries the header, later ones the model bytes, then the eval data."""
    if isinstance(item, ImportModelHeader):
        return admin_pb.ImportModelRequest(header=import_model_header_to_pb(item))
    if isinstance(item, EvalDataChunk):
        return admin_pb.ImportModelRequest(eval_data=bytes(item.data))
    return admin_pb.ImportModelRequest(data=bytes(item))


def import_model_request_from_pb(
    pb: admin_pb.ImportModelRequest,
) -> ImportModelHeader | bytes | EvalDataChunk:
    which = pb.WhichOneof("body")
    if which == "header":
        return import_model_header_from_pb(pb.header, path="header")
    if which == "data":
        return pb.data
    if which == "eval_data":
        return EvalDataChunk(pb.eval_data)
    raise InvalidArgument("import model request: empty (no body set)")


def import_progress_to_pb(p: ImportProgress) -> admin_pb.ImportProgress:
    return admin_pb.ImportProgress(step=p.step, total=p.total, message=p.message)


def import_progress_from_pb(pb: admin_pb.ImportProgress) -> ImportProgress:
    return ImportProgress(step=pb.step, total=pb.total, message=_text(pb.message))


def import_model_event_to_pb(item: ImportProgress | Model) -> admin_pb.ImportModelEvent:
    """Progress while the variants are built; the last event carries the registered model."""
    if isinstance(item, ImportProgress):
        return admin_pb.ImportModelEvent(progress=import_progress_to_pb(item))
    return admin_pb.ImportModelEvent(model=model_to_pb(item))


def import_model_event_from_pb(pb: admin_pb.ImportModelEvent) -> ImportProgress | Model:
    which = pb.WhichOneof("body")
    if which == "progress":
        return import_progress_from_pb(pb.progress)
    if which == "model":
        return model_from_pb(pb.model, path="model")
    raise InvalidArgument("import model event: empty (no body set)")


def get_model_request_to_pb(name: str) -> admin_pb.GetModelRequest:
    return admin_pb.GetModelRequest(name=name)


def get_model_request_from_pb(pb: admin_pb.GetModelRequest) -> str:
    return _name("name", pb.name)


def list_models_request_to_pb() -> admin_pb.ListModelsRequest:
    return admin_pb.ListModelsRequest()


def list_models_response_to_pb(models: Iterable[Model]) -> admin_pb.ListModelsResponse:
    return admin_pb.ListModelsResponse(models=[model_to_pb(m) for m in models])


def list_models_response_from_pb(pb: admin_pb.ListModelsResponse) -> tuple[Model, ...]:
    return tuple(model_from_pb(m, path=f"models[{i}]") for i, m in enumerate(pb.models))


def assign_request_to_pb(
    device_id: str, model_name: str, variant: str = DEFAULT_VARIANT
) -> admin_pb.AssignRequest:
    return admin_pb.AssignRequest(device_id=device_id, model_name=model_name, variant=variant)


def assign_request_from_pb(pb: admin_pb.AssignRequest) -> tuple[str, str, str]:
    """``(device_id, model_name, variant)``; an empty variant means ``DEFAULT_VARIANT``."""
    return (
        _name("device_id", pb.device_id),
        _name("model_name", pb.model_name),
        _name("variant", pb.variant) if pb.variant else DEFAULT_VARIANT,
    )


def assign_response_to_pb(r: AssignResult) -> admin_pb.AssignResponse:
    return admin_pb.AssignResponse(device=device_to_pb(r.device), changed=r.changed)


def assign_response_from_pb(pb: admin_pb.AssignResponse) -> AssignResult:
    _required_message(pb, "device", "")
    return AssignResult(device=device_from_pb(pb.device, path="device"), changed=pb.changed)


# --- aliases named after the domain type -------------------------------------------------------

created_token_to_pb = create_token_response_to_pb
created_token_from_pb = create_token_response_from_pb
assign_result_to_pb = assign_response_to_pb
assign_result_from_pb = assign_response_from_pb


def get_artifact_manifest_request_to_pb(sha256: str) -> admin_pb.GetArtifactManifestRequest:
    return admin_pb.GetArtifactManifestRequest(sha256=sha256)


def get_artifact_manifest_request_from_pb(pb: admin_pb.GetArtifactManifestRequest) -> str:
    return _sha256("sha256", pb.sha256)


def artifact_manifest_doc_to_pb(manifest: dict[str, Any]) -> admin_pb.ArtifactManifestDoc:
    return admin_pb.ArtifactManifestDoc(json=json.dumps(manifest, sort_keys=True))


def artifact_manifest_doc_from_pb(pb: admin_pb.ArtifactManifestDoc) -> dict[str, Any]:
    try:
        manifest = json.loads(pb.json)
    except ValueError as exc:
        _fail("json", f"not JSON: {exc}")
    if not isinstance(manifest, dict):
        _fail("json", f"expected a JSON object, got {type(manifest).__name__}")
    return manifest


# --- admin.proto: segment evaluation and profile requests --------------------------------------


def segment_spec_to_pb(s: SegmentSpec) -> admin_pb.SegmentSpec:
    return admin_pb.SegmentSpec(start_cut=s.start_cut, end_cut=s.end_cut, precision=s.precision)


def segment_spec_from_pb(pb: admin_pb.SegmentSpec, *, path: str = "segment") -> SegmentSpec:
    """Only the fields are checked here; whether the segments cover the model, in order, on its
    profiled cut points is the service's check (it names every problem at once)."""
    return SegmentSpec(
        start_cut=pb.start_cut, end_cut=pb.end_cut, precision=_name(_at(path, "precision"), pb.precision)
    )


def _segments(path: str, pbs: Iterable[admin_pb.SegmentSpec]) -> tuple[SegmentSpec, ...]:
    items = list(pbs)
    if len(items) > MAX_EVALUATED_SEGMENTS:
        _fail(path, f"{len(items)} entries, at most {MAX_EVALUATED_SEGMENTS}")
    return tuple(segment_spec_from_pb(s, path=f"{path}[{i}]") for i, s in enumerate(items))


def evaluate_segments_request_to_pb(
    model_name: str, segments: Iterable[SegmentSpec]
) -> admin_pb.EvaluateSegmentsRequest:
    return admin_pb.EvaluateSegmentsRequest(
        model_name=model_name, segments=[segment_spec_to_pb(s) for s in segments]
    )


def evaluate_segments_request_from_pb(
    pb: admin_pb.EvaluateSegmentsRequest,
) -> tuple[str, tuple[SegmentSpec, ...]]:
    """``(model_name, segments)``; at least one segment."""
    segments = _segments("segments", pb.segments)
    if not segments:
        _fail("segments", "empty")
    return _name("model_name", pb.model_name), segments


def _optional(pb: Any, field: str) -> float | None:
    return _finite(field, getattr(pb, field)) if pb.HasField(field) else None


def evaluate_segments_response_to_pb(e: SegmentEvaluation) -> admin_pb.EvaluateSegmentsResponse:
    return admin_pb.EvaluateSegmentsResponse(
        model_name=e.model_name,
        segments=[segment_spec_to_pb(s) for s in e.segments],
        rows=e.rows,
        accuracy=e.accuracy,
        cosine=e.cosine,
        agreement=e.agreement,
        predicted_accuracy=e.predicted_accuracy,
        predicted_cosine=e.predicted_cosine,
        predicted_agreement=e.predicted_agreement,
    )


def evaluate_segments_response_from_pb(pb: admin_pb.EvaluateSegmentsResponse) -> SegmentEvaluation:
    return SegmentEvaluation(
        model_name=_name("model_name", pb.model_name),
        segments=_segments("segments", pb.segments),
        rows=pb.rows,
        accuracy=_optional(pb, "accuracy"),
        cosine=_optional(pb, "cosine"),
        agreement=_optional(pb, "agreement"),
        predicted_accuracy=_optional(pb, "predicted_accuracy"),
        predicted_cosine=_optional(pb, "predicted_cosine"),
        predicted_agreement=_optional(pb, "predicted_agreement"),
    )


def request_profile_request_to_pb(
    model_name: str, device_ids: Iterable[str] = (), hardware_class: str = "", runs: int = 0
) -> admin_pb.RequestProfileRequest:
    return admin_pb.RequestProfileRequest(
        model_name=model_name, device_ids=list(device_ids), hardware_class=hardware_class, runs=runs
    )


def request_profile_request_from_pb(
    pb: admin_pb.RequestProfileRequest,
) -> tuple[str, tuple[str, ...], str, int]:
    """``(model_name, device_ids, hardware_class, runs)``: exactly one of device ids and hardware class;
    runs 0 means the controller's default."""
    if len(pb.device_ids) > MAX_PROFILED_DEVICES:
        _fail("device_ids", f"{len(pb.device_ids)} entries, at most {MAX_PROFILED_DEVICES}")
    device_ids = tuple(_name(f"device_ids[{i}]", d) for i, d in enumerate(pb.device_ids))
    hardware_class = _hardware_class("hardware_class", pb.hardware_class, required=False)
    if bool(device_ids) == bool(hardware_class):
        _fail("device_ids", "give either device ids or a hardware class (not both, not neither)")
    if pb.runs > MAX_PROFILE_RUNS:
        _fail("runs", f"{pb.runs}, at most {MAX_PROFILE_RUNS}")
    return _name("model_name", pb.model_name), tuple(dict.fromkeys(device_ids)), hardware_class, pb.runs


def request_profile_response_to_pb(
    model_name: str, records: Iterable[ProfileRequestRecord]
) -> admin_pb.RequestProfileResponse:
    return admin_pb.RequestProfileResponse(
        model_name=model_name,
        requests=[
            admin_pb.ProfileRequested(
                device_id=r.device_id,
                request_id=r.request_id,
                requested_at_ms=r.requested_at_ms,
                batch_sizes=list(r.batch_sizes),
                runs=r.runs,
            )
            for r in records
        ],
    )


def request_profile_response_from_pb(pb: admin_pb.RequestProfileResponse) -> tuple[ProfileRequestRecord, ...]:
    model_name = _name("model_name", pb.model_name)
    return tuple(
        ProfileRequestRecord(
            device_id=_name(f"requests[{i}].device_id", r.device_id),
            model_name=model_name,
            request_id=_name(f"requests[{i}].request_id", r.request_id),
            batch_sizes=tuple(r.batch_sizes),
            runs=r.runs,
            requested_at_ms=r.requested_at_ms,
        )
        for i, r in enumerate(pb.requests)
    )


# --- policies: plan, diff, apply, history ------------------------------------------------------


def _policy_files(path: str, pbs: Sequence[admin_pb.PolicyFile]) -> tuple[PolicyFile, ...]:
    if not pbs:
        _fail(path, "no policy files")
    if len(pbs) > MAX_POLICY_FILES:
        _fail(path, f"{len(pbs)} files, at most {MAX_POLICY_FILES}")
    total = sum(len(f.content) for f in pbs)
    if total > MAX_POLICY_BYTES:
        _fail(path, f"{total} characters of policy text, at most {MAX_POLICY_BYTES}")
    out = tuple(PolicyFile(_nonempty(f"{path}[{i}].path", f.path), f.content) for i, f in enumerate(pbs))
    if len({f.path for f in out}) != len(out):
        _fail(path, "a file path is listed twice")
    return out


def _policy_files_to_pb(files: Iterable[PolicyFile]) -> list[admin_pb.PolicyFile]:
    return [admin_pb.PolicyFile(path=f.path, content=f.content) for f in files]


def plan_policies_request_to_pb(
    files: Iterable[PolicyFile], *, explain: Iterable[str] = (), devices: bool = False
) -> admin_pb.PlanPoliciesRequest:
    return admin_pb.PlanPoliciesRequest(
        files=_policy_files_to_pb(files), explain=list(explain), devices=devices
    )


def plan_policies_request_from_pb(
    pb: admin_pb.PlanPoliciesRequest,
) -> tuple[tuple[PolicyFile, ...], tuple[str, ...], bool]:
    """``(files, devices to explain, include every device's plan)``."""
    if len(pb.explain) > MAX_PROFILED_DEVICES:
        _fail("explain", f"{len(pb.explain)} devices, at most {MAX_PROFILED_DEVICES}")
    explain = tuple(_name(f"explain[{i}]", d) for i, d in enumerate(pb.explain))
    return _policy_files("files", pb.files), explain, pb.devices


def plan_policies_response_to_pb(plan_doc: dict[str, Any]) -> admin_pb.PlanPoliciesResponse:
    return admin_pb.PlanPoliciesResponse(plan_json=json.dumps(plan_doc, sort_keys=True))


def plan_policies_response_from_pb(pb: admin_pb.PlanPoliciesResponse) -> dict[str, Any]:
    return _json_object("plan_json", pb.plan_json)


def _json_object(path: str, text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        _fail(path, f"not JSON: {exc}")
    if not isinstance(value, dict):
        _fail(path, "not a JSON object")
    return value


def _changes_to_pb(changes: Iterable[AssignmentChange]) -> list[admin_pb.AssignmentChange]:
    return [admin_pb.AssignmentChange(device_id=c.device_id, before=c.before, after=c.after) for c in changes]


def _changes_from_pb(pbs: Iterable[admin_pb.AssignmentChange]) -> tuple[AssignmentChange, ...]:
    return tuple(
        AssignmentChange(_name(f"changes[{i}].device_id", c.device_id), _text(c.before), _text(c.after))
        for i, c in enumerate(pbs)
    )


def diff_policies_response_to_pb(
    policy_diff: dict[str, Any], changes: Iterable[AssignmentChange], plan_summary: dict[str, Any]
) -> admin_pb.DiffPoliciesResponse:
    return admin_pb.DiffPoliciesResponse(
        policy_diff_json=json.dumps(policy_diff, sort_keys=True),
        changes=_changes_to_pb(changes),
        plan_summary_json=json.dumps(plan_summary, sort_keys=True),
    )


def diff_policies_response_from_pb(
    pb: admin_pb.DiffPoliciesResponse,
) -> tuple[dict[str, Any], tuple[AssignmentChange, ...], dict[str, Any]]:
    return (
        _json_object("policy_diff_json", pb.policy_diff_json),
        _changes_from_pb(pb.changes),
        _json_object("plan_summary_json", pb.plan_summary_json),
    )


def apply_policies_request_to_pb(
    files: Iterable[PolicyFile],
    *,
    applied_by: str,
    git_commit: str,
    git_dirty: bool,
    source: str,
    message: str,
) -> admin_pb.ApplyPoliciesRequest:
    return admin_pb.ApplyPoliciesRequest(
        files=_policy_files_to_pb(files),
        applied_by=applied_by,
        git_commit=git_commit,
        git_dirty=git_dirty,
        source=source,
        message=message,
    )


@dataclass(frozen=True, slots=True)
class ApplyRequest:
    files: tuple[PolicyFile, ...]
    applied_by: str
    git_commit: str
    git_dirty: bool
    source: str
    message: str


def apply_policies_request_from_pb(pb: admin_pb.ApplyPoliciesRequest) -> ApplyRequest:
    commit = pb.git_commit
    if commit and (len(commit) > 64 or not all(c in "0123456789abcdef" for c in commit)):
        _fail("git_commit", f"{commit[:80]!r} is not a hex commit id")
    return ApplyRequest(
        files=_policy_files("files", pb.files),
        applied_by=_text(pb.applied_by),
        git_commit=commit,
        git_dirty=pb.git_dirty,
        source=_text(pb.source),
        message=_text(pb.message),
    )


def policy_apply_to_pb(a: PolicyApply) -> admin_pb.PolicyApply:
    return admin_pb.PolicyApply(
        id=a.id,
        applied_at_ms=a.applied_at_ms,
        applied_by=a.applied_by,
        git_commit=a.git_commit,
        git_dirty=a.git_dirty,
        source=a.source,
        digest=a.digest,
        documents=a.documents,
        devices_changed=a.devices_changed,
        summary_json=a.summary_json,
        message=a.message,
    )


def policy_apply_from_pb(pb: admin_pb.PolicyApply, *, path: str = "apply") -> PolicyApply:
    return PolicyApply(
        id=pb.id,
        applied_at_ms=pb.applied_at_ms,
        applied_by=_text(pb.applied_by),
        git_commit=_text(pb.git_commit),
        git_dirty=pb.git_dirty,
        source=_text(pb.source),
        digest=_sha256(_at(path, "digest"), pb.digest, required=False),
        documents=pb.documents,
        devices_changed=pb.devices_changed,
        summary_json=pb.summary_json or "{}",
        message=_text(pb.message),
    )


def apply_policies_response_to_pb(
    record: PolicyApply, *, changed: bool, changes: Iterable[AssignmentChange]
) -> admin_pb.ApplyPoliciesResponse:
    return admin_pb.ApplyPoliciesResponse(
        apply=policy_apply_to_pb(record), changed=changed, changes=_changes_to_pb(changes)
    )


def apply_policies_response_from_pb(
    pb: admin_pb.ApplyPoliciesResponse,
) -> tuple[PolicyApply, bool, tuple[AssignmentChange, ...]]:
    return policy_apply_from_pb(pb.apply), pb.changed, _changes_from_pb(pb.changes)


def list_policy_applies_request_to_pb(limit: int = 0) -> admin_pb.ListPolicyAppliesRequest:
    return admin_pb.ListPolicyAppliesRequest(limit=limit)


def list_policy_applies_request_from_pb(pb: admin_pb.ListPolicyAppliesRequest) -> int:
    if pb.limit > MAX_POLICY_HISTORY:
        _fail("limit", f"{pb.limit}, at most {MAX_POLICY_HISTORY}")
    return pb.limit or 50


def list_policy_applies_response_to_pb(applies: Iterable[PolicyApply]) -> admin_pb.ListPolicyAppliesResponse:
    return admin_pb.ListPolicyAppliesResponse(applies=[policy_apply_to_pb(a) for a in applies])


def list_policy_applies_response_from_pb(pb: admin_pb.ListPolicyAppliesResponse) -> tuple[PolicyApply, ...]:
    return tuple(policy_apply_from_pb(a, path=f"applies[{i}]") for i, a in enumerate(pb.applies))


# --- device latency ---------------------------------------------------------------------------------


def get_device_latency_request_to_pb(device_id: str, window: int = 0) -> admin_pb.GetDeviceLatencyRequest:
    return admin_pb.GetDeviceLatencyRequest(device_id=device_id, window=window)


def get_device_latency_request_from_pb(pb: admin_pb.GetDeviceLatencyRequest) -> tuple[str, int]:
    if pb.window > MAX_LATENCY_WINDOW:
        _fail("window", f"{pb.window} records, at most {MAX_LATENCY_WINDOW}")
    return _name("device_id", pb.device_id), pb.window or DEFAULT_LATENCY_WINDOW


def device_latency_to_pb(x: DeviceLatency) -> admin_pb.DeviceLatency:
    return admin_pb.DeviceLatency(
        device_id=x.device_id,
        window=x.window,
        requests=x.requests,
        outcomes=[admin_pb.OutcomeCount(name=k, count=v) for k, v in x.outcomes],
        paths=[admin_pb.OutcomeCount(name=k, count=v) for k, v in x.paths],
        measured=x.measured,
        p50_ms=x.p50_ms,
        p95_ms=x.p95_ms,
        p99_ms=x.p99_ms,
        percentile=x.percentile,
        at_percentile_ms=x.at_percentile_ms,
        predicted_ms=x.predicted_ms,
        slo_ms=x.slo_ms,
        hops=[
            admin_pb.HopLatency(
                tier=h.tier,
                device_id=h.device_id,
                requests=h.requests,
                compute_ms_p50=h.compute_ms_p50,
                compute_ms_p95=h.compute_ms_p95,
                queue_ms_p50=h.queue_ms_p50,
                transfer_ms_p50=h.transfer_ms_p50,
                mean_batch_size=h.mean_batch_size,
                predicted_compute_ms=h.predicted_compute_ms,
                predicted_queue_ms=h.predicted_queue_ms,
                predicted_transfer_ms=h.predicted_transfer_ms,
            )
            for h in x.hops
        ],
    )


def device_latency_from_pb(pb: admin_pb.DeviceLatency) -> DeviceLatency:
    def ms(path: str, value: float) -> float:
        return _latency(path, value)

    return DeviceLatency(
        device_id=_name("device_id", pb.device_id),
        window=pb.window,
        requests=pb.requests,
        outcomes=tuple((_text(c.name), c.count) for c in pb.outcomes),
        paths=tuple((_text(c.name), c.count) for c in pb.paths),
        measured=pb.measured,
        p50_ms=ms("p50_ms", pb.p50_ms),
        p95_ms=ms("p95_ms", pb.p95_ms),
        p99_ms=ms("p99_ms", pb.p99_ms),
        percentile=_finite("percentile", pb.percentile),
        at_percentile_ms=ms("at_percentile_ms", pb.at_percentile_ms),
        predicted_ms=ms("predicted_ms", pb.predicted_ms),
        slo_ms=ms("slo_ms", pb.slo_ms),
        hops=tuple(
            HopLatency(
                tier=_text(h.tier),
                device_id=_name(f"hops[{i}].device_id", h.device_id),
                requests=h.requests,
                compute_ms_p50=ms(f"hops[{i}].compute_ms_p50", h.compute_ms_p50),
                compute_ms_p95=ms(f"hops[{i}].compute_ms_p95", h.compute_ms_p95),
                queue_ms_p50=ms(f"hops[{i}].queue_ms_p50", h.queue_ms_p50),
                transfer_ms_p50=ms(f"hops[{i}].transfer_ms_p50", h.transfer_ms_p50),
                mean_batch_size=_finite(f"hops[{i}].mean_batch_size", h.mean_batch_size),
                predicted_compute_ms=ms(f"hops[{i}].predicted_compute_ms", h.predicted_compute_ms),
                predicted_queue_ms=ms(f"hops[{i}].predicted_queue_ms", h.predicted_queue_ms),
                predicted_transfer_ms=ms(f"hops[{i}].predicted_transfer_ms", h.predicted_transfer_ms),
            )
            for i, h in enumerate(pb.hops)
        ),
    )
