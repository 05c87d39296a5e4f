"""Shared test setup."""

from __future__ import annotations

import os

# Quiet TensorFlow's C++ start-up chatter in test output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
