"""Arguments several commands share, so that they are spelled the same everywhere."""

from __future__ import annotations

import argparse

__all__ = ["add_backend_args", "add_log_args"]


def add_backend_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backend",
        choices=("auto", "ipvs", "nftables"),
        default="auto",
        help="kernel data plane (auto: IPVS when the kernel has it, else nftables)",
    )
    p.add_argument("--netns", metavar="NAME", help="operate inside this network namespace (ip netns)")


def add_log_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--log-format", choices=("text", "json"), default="text", help="text, or one JSON object per line"
    )
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
