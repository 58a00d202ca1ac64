"""Policy-gradient objectives from log-probabilities: REINFORCE with a baseline and actor-critic."""

from __future__ import annotations
