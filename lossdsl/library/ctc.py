"""Connectionist temporal classification (``nn.CTCLoss``) with input and target lengths."""

from __future__ import annotations
