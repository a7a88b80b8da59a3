"""kubelvs doctor: find LVS/IPVS failure modes in a bundle of captured outputs or on the
live host, and print the commands that fix them.

    analyse(Bundle.load(dir))        -> list[Finding], errors first
    analyse(live_bundle(netns=...))  -> the same for the running kernel / one namespace
    analyse_site({host: Bundle})     -> per host, with DR real servers matched to directors
    analyse(read_paste(text).bundle()) -> the same for outputs pasted into one text (paste.py)
    collect(dir, netns=...)          -> write a bundle
    examine(bundle, origin=...)      -> what a report looked at, and what to capture next
"""

from .analyse import analyse, analyse_site
from .bundle import FILES, ROLES, Bundle
from .examined import Examined, examine
from .findings import FINDING_IDS, Finding, Severity
from .live import collect, live_bundle, live_texts
from .paste import Paste, read_paste, relocate
from .report import exit_code, render_json, render_markdown, render_text

__all__ = [
    "FILES",
    "FINDING_IDS",
    "ROLES",
    "Bundle",
    "Examined",
    "Finding",
    "Paste",
    "Severity",
    "analyse",
    "analyse_site",
    "collect",
    "examine",
    "exit_code",
    "live_bundle",
    "live_texts",
    "read_paste",
    "relocate",
    "render_json",
    "render_markdown",
    "render_text",
]
