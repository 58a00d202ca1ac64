"""Sequence losses: token-level cross-entropy over ``[B, T, V]`` and the chunked cross-entropy from
hidden states for large vocabularies."""

from __future__ import annotations
