"""``InMemoryStore`` against the shared conformance suite."""

from __future__ import annotations

from pathlib import Path

from controller.store.base import Store
from controller.store.memory import InMemoryStore
from tests.store.conformance import StoreConformance


class TestInMemoryStore(StoreConformance):
    def store_factory(self, tmp_path: Path) -> Store:
        return InMemoryStore()
