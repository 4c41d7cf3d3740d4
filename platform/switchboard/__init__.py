"""Switchboard: a real-time messaging platform built as an actor system on Ray."""

__version__ = "0.1.0"
