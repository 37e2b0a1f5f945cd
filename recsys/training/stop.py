"""Stopping training on request (SIGTERM) with a checkpoint, without importing torch."""

from __future__ import annotations


class TrainingInterrupted(Exception):
    """Training stopped on SIGTERM after saving a checkpoint that a restarted job resumes from."""


class StopRequest:
    """Set from a signal handler; the loop polls it between steps (no locking needed for a bool)."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""

    def request(self, signal_name: str) -> None:
        self.requested, self.signal_name = True, signal_name
