"""Control messages as bytes, for transports that carry payloads rather than gRPC messages (MQTT,
in-process): the same protobuf encoding and the same validation as the Connect stream."""

from __future__ import annotations

from edgefleet.v1 import controller_pb2 as controller_pb
from google.protobuf.message import DecodeError

from common.errors import InvalidArgument
from common.serde._control import (
    agent_message_from_pb,
    agent_message_to_pb,
    controller_message_from_pb,
    controller_message_to_pb,
)
from common.types import AgentMessage, ControllerMessage


def agent_message_to_bytes(msg: AgentMessage) -> bytes:
    return agent_message_to_pb(msg).SerializeToString()


def agent_message_from_bytes(data: bytes) -> AgentMessage:
    """InvalidArgument when ``data`` is not a protobuf AgentMessage or fails validation."""
    pb = controller_pb.AgentMessage()
    try:
        pb.ParseFromString(data)
    except DecodeError as exc:
        raise InvalidArgument(f"agent message: not a protobuf AgentMessage ({exc})") from None
    return agent_message_from_pb(pb)


def controller_message_to_bytes(msg: ControllerMessage) -> bytes:
    return controller_message_to_pb(msg).SerializeToString()


def controller_message_from_bytes(data: bytes) -> ControllerMessage:
    """InvalidArgument when ``data`` is not a protobuf ControllerMessage or fails validation."""
    pb = controller_pb.ControllerMessage()
    try:
        pb.ParseFromString(data)
    except DecodeError as exc:
        raise InvalidArgument(f"controller message: not a protobuf ControllerMessage ({exc})") from None
    return controller_message_from_pb(pb)
