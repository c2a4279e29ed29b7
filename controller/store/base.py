"""The controller's storage boundary.

Every implementation passes ``tests/store/conformance.py``. Methods take the current time as an
argument (``now_ms``) instead of reading a clock, so behaviour is reproducible in tests and the
simulator. Each method is one atomic transaction. Errors are typed (``common.errors``): a missing
row is ``NotFound``, a duplicate ``AlreadyExists``, a refused token ``Unauthenticated`` with a code
that says why — never ``False`` or ``None`` for a failure.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from dataclasses import dataclass

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

#: Error codes of Unauthenticated raised by ``consume_token``/``enroll_device``.
TOKEN_UNKNOWN = "token_unknown"
TOKEN_EXPIRED = "token_expired"
TOKEN_EXHAUSTED = "token_exhausted"


@dataclass(frozen=True, slots=True)
class PlannedAssignment:
    """A device's desired assignment as a plan sets it."""

    device_id: str
    model_name: str
    variant: str
    artifact_sha256: str
    artifact_size_bytes: int
    plan: AssignmentPlan | None
    serve: tuple[ServedSegment, ...] = ()


@dataclass(frozen=True, slots=True)
class ApplyOutcome:
    record: PolicyApply
    changed: tuple[Device, ...]  # the devices whose desired assignment changed (new versions)
    recorded: bool  # False: nothing was different, nothing written


class Store(ABC):
    # --- bootstrap tokens -----------------------------------------------------------------------

    @abstractmethod
    def create_token(
        self, token_id: str, token_hash: str, *, expires_at_ms: int, uses: int, description: str, now_ms: int
    ) -> BootstrapToken:
        """Store a new bootstrap token by the hash of its secret. AlreadyExists on a duplicate id/hash."""

    @abstractmethod
    def list_tokens(self) -> list[BootstrapToken]:
        """All tokens, newest first."""

    # --- devices --------------------------------------------------------------------------------

    @abstractmethod
    def enroll_device(
        self, device_id: str, hardware: HardwareProfile, *, credential_hash: str, token_hash: str, now_ms: int
    ) -> tuple[Device, bool]:
        """Atomically spend one use of the token and register the device. Returns (device, created).

        Safe to repeat: if ``device_id`` is already enrolled with this very ``credential_hash`` (the agent
        retrying an enrollment whose answer it never received), the stored device is returned unchanged
        with created=False, and the token is neither checked nor spent (the first call may have used its
        last use, or it may have expired since).

        Otherwise raises Unauthenticated (code TOKEN_UNKNOWN / TOKEN_EXPIRED / TOKEN_EXHAUSTED) for a bad
        token, then AlreadyExists if the device id is taken (with another credential); in both cases
        nothing changes.
        """

    @abstractmethod
    def get_device(self, device_id: str) -> Device:
        """NotFound if there is no such device."""

    @abstractmethod
    def list_devices(self) -> list[Device]:
        """All devices ordered by id."""

    @abstractmethod
    def list_unacked(
        self, device_ids: Collection[str] | None = None, *, connected_only: bool = False
    ) -> list[Device]:
        """Devices whose ``desired_version`` is above their ``acked_version`` (an assignment still to be
        acknowledged), ordered by id; only those among ``device_ids`` when it is given (unknown ids are
        ignored), only connected ones with ``connected_only``. One call, however many ids: the
        reconcile loop asks this once per pass.
        """

    @abstractmethod
    def get_credential_hash(self, device_id: str) -> str:
        """The stored hash of the device's credential. NotFound if there is no such device."""

    @abstractmethod
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
        """Record a hello: connected, last seen, the hardware and state the device reports, its links
        and the address its SegmentService answers on (each replacing the stored one; None keeps it).

        ``records_dropped`` is the agent's running total; the stored value never decreases.
        ``reported.acked_version`` is taken as the acked version only if it is not above the desired
        version (a device cannot ack what was never desired). NotFound for an unknown device.
        """

    @abstractmethod
    def device_disconnected(self, device_id: str, *, now_ms: int) -> Device:
        """Mark the device disconnected and update last seen."""

    @abstractmethod
    def mark_all_disconnected(self) -> int:
        """At controller start-up no stream is open: clear every stale ``connected`` flag. Returns count."""

    @abstractmethod
    def touch_device(self, device_id: str, *, now_ms: int) -> None:
        """Update last seen (heartbeats)."""

    @abstractmethod
    def set_links(self, device_id: str, links: Sequence[LinkMeasurement], *, now_ms: int) -> bool:
        """Replace the device's reported links (a heartbeat that carried them); True if they changed.
        NotFound for an unknown device."""

    @abstractmethod
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
        """Set the desired assignment. Returns (device, changed).

        Bumps ``desired_version`` by one and returns changed=True if the target (model, variant, sha256,
        the plan's placement — not its predictions, see ``_rules.placement`` — and the segments it
        serves) differs from the current one, or if it is the same target but the device reported the current
        version failed (``last_failure`` set and ``failed_version == desired_version``) and
        ``retry_failed``: assigning it again is how an operator retries. Otherwise repeating it changes
        nothing (policies pass ``retry_failed=False``: they never resend a failing version on their own).
        NotFound for an unknown device.
        """

    @abstractmethod
    def record_ack(self, device_id: str, ack: AssignmentAck, *, now_ms: int) -> Device:
        """Apply an assignment ack. Safe to repeat and to receive out of order:

        - an ack for a version above desired is ignored (stale/forged);
        - ``acked_version`` becomes max(acked_version, ack.version);
        - a failed ack also records ``last_failure``, ``last_failure_message`` and
          ``failed_version = max(failed_version, ack.version)``; a successful ack of a version at or above
          ``failed_version`` clears ``last_failure``;
        - ``reported`` is replaced by the ack's reported state if ack.version >= the stored acked version.
        """

    # --- telemetry ------------------------------------------------------------------------------

    @abstractmethod
    def append_telemetry(self, device_id: str, records: Sequence[TelemetryRecord], *, now_ms: int) -> int:
        """Store records idempotently by (device, sequence); return how many were new.

        Updates ``records_received`` (count of distinct stored records) and ``last_sequence`` (max
        stored sequence) and last seen. NotFound for an unknown device.
        """

    @abstractmethod
    def list_telemetry(
        self, device_id: str, *, after_sequence: int = 0, limit: int = 1000
    ) -> list[TelemetryRecord]:
        """Stored records of a device with sequence > after_sequence, ascending, at most ``limit``."""

    @abstractmethod
    def latest_telemetry(self, device_id: str, *, limit: int) -> list[TelemetryRecord]:
        """A device's latest ``limit`` stored records (by sequence: sequences have gaps, a restart
        numbers above a reserved block), ascending. NotFound for an unknown device."""

    # --- models ---------------------------------------------------------------------------------

    @abstractmethod
    def add_model_variant(self, name: str, variant: ModelVariant, *, now_ms: int) -> tuple[Model, bool]:
        """Register a variant (creating the model if new). Returns (model, created).

        Importing identical bytes again (same sha256) is a no-op with created=False. A different sha256
        for an existing (name, variant) raises AlreadyExists naming both hashes.
        """

    @abstractmethod
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
        """Record one toolchain build of an existing model, all or nothing; returns the model.

        Each variant is registered by ``add_model_variant``'s rules, except that the same sha256 again
        updates the stored variant's measurements (precision, method, latencies, metrics; e.g. the
        fp32 upload measured by the build); a conflicting one raises AlreadyExists and nothing of the
        call is kept. The model's rejected
        candidates are replaced by ``rejected`` (the latest build's, in order). NotFound if the model
        does not exist. ``cut_points``, ``block_profiles``, ``block_accuracy``, ``call_overhead`` and the
        ``profile_inputs`` and ``eval_data`` artifacts, each where given (not None), replace the model's stored one (the
        latest build's); None keeps what is stored.
        """

    @abstractmethod
    def get_model(self, name: str) -> Model:
        """NotFound if there is no such model. ``class_profiles`` is computed from the devices' latest
        profile reports (``_rules.class_profiles``) over the model's current block profiles, and
        ``class_call_overhead`` from the same reports (``_rules.class_call_overhead``)."""

    @abstractmethod
    def list_models(self) -> list[Model]:
        """All models ordered by name (each as ``get_model`` returns it)."""

    # --- device profiles ------------------------------------------------------------------------

    @abstractmethod
    def request_profiles(
        self,
        model_name: str,
        requests: Sequence[tuple[str, str]],
        *,
        batch_sizes: Sequence[int],
        runs: int,
        now_ms: int,
    ) -> list[ProfileRequestRecord]:
        """Record a pending profile request of ``model_name`` for each ``(device_id, request_id)``, in
        that order, all or nothing. Each replaces the device's earlier request for the model (so a report
        that still arrives for that one is stale); its latest report stays until the new one arrives.
        NotFound for an unknown model or device; AlreadyExists for a request id already used."""

    @abstractmethod
    def list_pending_profile_requests(
        self, device_ids: Collection[str] | None = None
    ) -> list[ProfileRequestRecord]:
        """Requests still waiting for their report, ordered by (device id, model name); only those of
        ``device_ids`` when it is given (unknown ids are ignored). One call for the whole fleet."""

    @abstractmethod
    def record_profile_report(
        self, device_id: str, report: ProfileReport, *, now_ms: int
    ) -> ProfileRequestRecord:
        """Store ``report`` as the device's latest for its model, with the device's hardware class now,
        and complete the request it answers; returns that request. Safe to repeat: the same report
        again replaces the stored copy and keeps the first completion time. NotFound (nothing stored)
        when the device or model is unknown, or the request id is not the device's current request for
        the model (``_rules.check_profile_report``)."""

    @abstractmethod
    def list_profile_reports(self, model_name: str) -> list[DeviceProfileReport]:
        """The latest report of every device that profiled ``model_name``, ordered by device id
        (empty for a model nobody profiled). NotFound for an unknown model."""

    # --- segment artifacts ----------------------------------------------------------------------

    @abstractmethod
    def find_segment_artifact(
        self, source_sha256: str, start_cut: int, end_cut: int, method: str
    ) -> tuple[str, int] | None:
        """(sha256, size) of the artifact built for this segment of this source model, if any."""

    @abstractmethod
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
        """Remember a built segment artifact. Safe to repeat (the first one recorded stays)."""

    # --- policies -------------------------------------------------------------------------------

    @abstractmethod
    def apply_policies(self, record: PolicyApply, assignments: Sequence[PlannedAssignment]) -> ApplyOutcome:
        """Set every planned device's assignment (``set_assignment``'s rules, a failed version not
        retried) and record the apply, in
        one transaction: all or nothing. ``record.id`` and ``devices_changed`` are filled in here.

        Safe to repeat: when no assignment changes and ``record.digest`` equals the latest apply's,
        nothing is written and the outcome has ``recorded=False`` with the latest apply. NotFound
        (nothing written) if a device does not exist."""

    @abstractmethod
    def latest_policy_apply(self) -> PolicyApply | None:
        """The newest apply (the policies in force), with its policies; None before the first."""

    @abstractmethod
    def list_policy_applies(self, *, limit: int = 50) -> list[PolicyApply]:
        """Applies, newest first, at most ``limit``, without their policies (``policies_json`` '')."""

    # --- lifecycle ------------------------------------------------------------------------------

    @abstractmethod
    def close(self) -> None:
        """Release resources; safe to call twice."""
