"""Every size and queue bound in one place, so they are explicit and reviewed together."""

from __future__ import annotations

MIB = 1024 * 1024

#: gRPC max send/receive message size on every channel and server (controller, admin, agent).
MAX_GRPC_MESSAGE_BYTES = 64 * MIB
#: Channel/server options that apply MAX_GRPC_MESSAGE_BYTES both ways (every gRPC endpoint uses them).
GRPC_MESSAGE_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_BYTES),
]
#: Largest tensor payload accepted by Infer (sum of input bytes).
MAX_INFER_INPUT_BYTES = 32 * MIB
#: Artifact download chunk size.
ARTIFACT_CHUNK_BYTES = 1 * MIB
#: Largest model the controller accepts on import.
MAX_MODEL_BYTES = 1024 * MIB
#: Most telemetry records in one batch on the control stream.
MAX_TELEMETRY_BATCH = 256
#: Most telemetry records an agent holds in memory before dropping the oldest (counted, reported).
MAX_PENDING_TELEMETRY = 10_000
#: Outgoing messages queued per connected device on the controller before it sheds the stream.
MAX_STREAM_OUTBOX = 64
#: Longest string fields (error messages, descriptions) kept from peers.
MAX_TEXT_CHARS = 2_000
#: Most blocks (cut range x precision) one profile request may ask an agent to time.
MAX_PROFILE_BLOCKS = 256
#: Most batch sizes per profile request, and the largest batch size an agent is asked to time.
MAX_PROFILE_BATCH_SIZES = 8
MAX_PROFILE_BATCH = 1024
#: Most timed calls per block and batch size a profile request may ask for.
MAX_PROFILE_RUNS = 1000
#: Most timings in one profile report (every block at every batch size).
MAX_PROFILE_TIMINGS = MAX_PROFILE_BLOCKS * MAX_PROFILE_BATCH_SIZES
#: Profile requests an agent queues behind the one it runs; more are dropped (the controller resends).
MAX_QUEUED_PROFILES = 4
#: Finished profile reports an agent keeps to answer a repeated request without profiling again.
MAX_KEPT_PROFILE_REPORTS = 16
#: Segments one EvaluateSegments call may name, and devices one RequestProfile call may list.
MAX_EVALUATED_SEGMENTS = 64
MAX_PROFILED_DEVICES = 10_000
#: Links a device reports (one per compute pool it can reach).
MAX_LINKS = 32
#: Policy files in one plan/diff/apply request, and their total size.
MAX_POLICY_FILES = 512
MAX_POLICY_BYTES = 8 * MIB
#: Applies a history listing returns at most.
MAX_POLICY_HISTORY = 1000
#: Segments a serving node keeps loaded for others, and workers a segment is spread over.
MAX_SERVED_SEGMENTS = 256
MAX_SEGMENT_ENDPOINTS = 256
#: Hops a partitioned request may still have to go (device -> edge -> cloud: at most 2 after the first).
MAX_ROUTE_HOPS = 2

#: Telemetry records a latency summary reads by default, and at most (a device's latest).
DEFAULT_LATENCY_WINDOW = 1000
MAX_LATENCY_WINDOW = 20_000

#: MQTT transport (common/mqtt): the largest payload either side publishes or accepts, refused with an
#: error naming the topic; a broker's max_packet_size should allow MAX_MQTT_PACKET_BYTES.
MAX_MQTT_PAYLOAD_BYTES = 1 * MIB
#: A packet's room for the topic and properties on top of its payload.
MAX_MQTT_PACKET_BYTES = MAX_MQTT_PAYLOAD_BYTES + 16 * 1024
#: QoS 1 publishes one MQTT client holds unacknowledged (in flight plus queued) before it refuses more:
#: far below MQTT's 65,535 packet ids, whose wrap would otherwise reuse the id of a message in flight.
MQTT_AGENT_MAX_UNACKED = 1024
MQTT_BRIDGE_MAX_UNACKED = 16_384
#: QoS 1 publishes in flight at once per client (lowered to the broker's Receive Maximum when smaller).
MQTT_MAX_INFLIGHT = 100
#: QoS 1 messages the broker may send a client before it has acknowledged them (its Receive Maximum):
#: the agent acknowledges a message once its core has taken it, the bridge once the hub has handled it.
MQTT_AGENT_RECEIVE_MAXIMUM = 64
MQTT_BRIDGE_RECEIVE_MAXIMUM = 1024
