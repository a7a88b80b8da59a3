"""Arguments several commands share, so that they are spelled the same everywhere."""

from __future__ import annotations

import argparse

__all__ = ["add_backend_args", "add_log_args", "add_metrics_args"]


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


def add_metrics_args(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument(
        "--metrics-address",
        default=default,
        metavar="HOST:PORT",
        help=f"serve Prometheus metrics on http://HOST:PORT/metrics (default {default}: loopback "
        "only; 0.0.0.0:PORT for a scraper on the network; off: none)",
    )
