"""Control-channel transports: one interface (``base``), implemented over gRPC, MQTT and in-process."""

from agent.transport.base import ChannelClosed, ChannelFull, Connection, Transport

__all__ = ["ChannelClosed", "ChannelFull", "Connection", "Transport"]
