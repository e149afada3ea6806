"""Subcommands of this family are added by their issue; nothing registered yet."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add this family's subcommands to ``physfm``."""
