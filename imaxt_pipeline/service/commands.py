"""Service sub-commands (watch, status, submit): each module adds its own parser."""

from __future__ import annotations

ADDERS: list = []
