"""The agent's sans-IO core: ``AgentCore.step(event) -> actions``. No sockets, files or threads here."""

from agent.core.machine import AgentCore, CoreConfig, Link

__all__ = ["AgentCore", "CoreConfig", "Link"]
