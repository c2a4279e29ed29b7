"""gRPC service plumbing: typed ``*ServiceStub`` clients, re-exported ``*ServiceServicer`` bases and
``add_*_to_server`` wrappers around the generated (untyped) code."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import grpc
import grpc.aio
from edgefleet.v1 import admin_pb2_grpc as _admin_grpc
from edgefleet.v1 import agent_pb2_grpc as _agent_grpc
from edgefleet.v1 import controller_pb2_grpc as _controller_grpc
from edgefleet.v1.admin_pb2_grpc import AdminServiceServicer
from edgefleet.v1.agent_pb2_grpc import AgentServiceServicer, SegmentServiceServicer
from edgefleet.v1.controller_pb2_grpc import ControllerServiceServicer

# --- service plumbing --------------------------------------------------------------------------
# The generated stubs and add_* functions are untyped (mypy flags calling them); these typed wrappers
# behave exactly the same. Stub methods (stub.Enroll, ...) stay Any; the servicer bases are re-exported.

_GrpcServer = grpc.Server | grpc.aio.Server
_GrpcChannel = grpc.Channel | grpc.aio.Channel
_Adder = Callable[[object, object], None]
_controller_stub_init: Final[Callable[[_controller_grpc.ControllerServiceStub, _GrpcChannel], None]] = (
    _controller_grpc.ControllerServiceStub.__init__
)
_admin_stub_init: Final[Callable[[_admin_grpc.AdminServiceStub, _GrpcChannel], None]] = (
    _admin_grpc.AdminServiceStub.__init__
)
_agent_stub_init: Final[Callable[[_agent_grpc.AgentServiceStub, _GrpcChannel], None]] = (
    _agent_grpc.AgentServiceStub.__init__
)
_segment_stub_init: Final[Callable[[_agent_grpc.SegmentServiceStub, _GrpcChannel], None]] = (
    _agent_grpc.SegmentServiceStub.__init__
)
_add_segment: Final[_Adder] = _agent_grpc.add_SegmentServiceServicer_to_server
_add_controller: Final[_Adder] = _controller_grpc.add_ControllerServiceServicer_to_server
_add_admin: Final[_Adder] = _admin_grpc.add_AdminServiceServicer_to_server
_add_agent: Final[_Adder] = _agent_grpc.add_AgentServiceServicer_to_server


class ControllerServiceStub(_controller_grpc.ControllerServiceStub):
    """Client for ControllerService: ``Enroll``, ``Connect``, ``FetchArtifact`` (sync or asyncio channel)."""

    def __init__(self, channel: _GrpcChannel) -> None:
        _controller_stub_init(self, channel)


class AdminServiceStub(_admin_grpc.AdminServiceStub):
    """Client for AdminService (sync or asyncio channel)."""

    def __init__(self, channel: _GrpcChannel) -> None:
        _admin_stub_init(self, channel)


class AgentServiceStub(_agent_grpc.AgentServiceStub):
    """Client for AgentService: ``Infer``, ``GetStatus`` (sync or asyncio channel)."""

    def __init__(self, channel: _GrpcChannel) -> None:
        _agent_stub_init(self, channel)


def add_ControllerServiceServicer_to_server(servicer: ControllerServiceServicer, server: _GrpcServer) -> None:
    _add_controller(servicer, server)


def add_AdminServiceServicer_to_server(servicer: AdminServiceServicer, server: _GrpcServer) -> None:
    _add_admin(servicer, server)


def add_AgentServiceServicer_to_server(servicer: AgentServiceServicer, server: _GrpcServer) -> None:
    _add_agent(servicer, server)


class SegmentServiceStub(_agent_grpc.SegmentServiceStub):
    """Client for SegmentService: ``RunSegment`` (a peer's offloaded segment)."""

    def __init__(self, channel: _GrpcChannel) -> None:
        _segment_stub_init(self, channel)


def add_SegmentServiceServicer_to_server(servicer: SegmentServiceServicer, server: _GrpcServer) -> None:
    _add_segment(servicer, server)
