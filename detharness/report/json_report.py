"""JSON report: every result with every field (null where it does not apply), non-finite numbers as strings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from detharness._io import json_dumps


def render(report: Mapping[str, Any]) -> str:
    return json_dumps(report, indent=2) + "\n"
