"""`base`: the model's own sampler, unchanged. Every other method is measured against it."""
from __future__ import annotations

from harness.engine.method import Method


class Base(Method):
    name = "base"
    description = "the model's own sampler (stochastic Self-Forcing steps or Euler ODE), no changes"
