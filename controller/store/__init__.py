"""Controller persistence: one interface (``Store``), several implementations, one conformance suite."""

from controller.store.base import Store

__all__ = ["Store"]
