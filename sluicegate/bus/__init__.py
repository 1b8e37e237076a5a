"""Where state crosses connections and processes: in-process by default, or Redis (bus/base.py)."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from sluicegate.bus.base import Bus
from sluicegate.bus.memory import MemoryBus
from sluicegate.config import Settings


def bus_for(settings: Settings, generations: MutableMapping[str, Any]) -> Bus:
    """The bus the settings ask for, over this process's registry of generations."""
    if settings.bus.url is None:
        return MemoryBus(generations)
    from sluicegate.bus.redis import RedisBus

    return RedisBus(settings.bus, generations)
