"""Live terminal display of an optimisation: the current stage (with runs as they
finish) on a transient status line, and one permanent line per proposal verdict."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.status import Status

from perfpilot.agent.figures import ci_label, shorten
from perfpilot.agent.outcomes import Outcome
from perfpilot.profilers.profile import Profile

STYLES = {"accepted": "bold green", "winner": "green", "rejected": "yellow", "refused": "red", "malformed": "red"}


class TerminalProgress:
    def __init__(self, console: Console, *, live: bool | None = None, quiet: bool = False) -> None:
        self.console = console
        self.quiet = quiet
        self.live = (console.is_terminal if live is None else live) and not quiet
        self.status: Status | None = None
        self.current = ""
        self.runs = 0

    def __enter__(self) -> "TerminalProgress":
        if self.live:
            self.status = self.console.status("starting", spinner="dots")
            self.status.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.status is not None:
            self.status.__exit__(None, None, None)
            self.status = None

    def stage(self, text: str) -> None:
        self.current = text
        self.runs = 0
        if self.status is not None:
            self.status.update(escape(text))
        elif not self.quiet:
            self.console.print(f"[dim]… {escape(text)}[/]")

    def run_done(self, side: str, index: int, profile: Profile) -> None:
        self.runs += 1
        if self.status is not None:
            label = "warm-up" if index == 0 else f"run {index}"
            wall = profile.summary.get("wall_s")
            took = f" {wall:.2f}s" if isinstance(wall, (int, float)) else ""
            self.status.update(escape(f"{self.current} — {side} {label}{took}"))

    def outcome(self, outcome: Outcome, objective: str) -> None:
        if self.quiet:
            return
        style = STYLES.get(outcome.status, "")
        line = f"[{style}]{escape(outcome.status):>9}[/] #{outcome.index} {escape(outcome.title())}: {escape(outcome.reason)}"
        verdict = outcome.verdicts.get(objective)
        if verdict:
            line += (f" — {objective} ×{verdict['ratio']:.3f} ({ci_label(verdict)} {verdict['ci_low']:.3f}–"
                     f"{verdict['ci_high']:.3f}, {verdict['runs_a']}+{verdict['runs_b']} runs)")
            if not outcome.improved and outcome.reason == "no change":
                line += " [dim](no measurable effect)[/]"
        elif outcome.detail and not outcome.improved:
            # The first line says why (the failing seed, the first output difference); a test
            # runner's last line is only its tally.
            first = outcome.detail.strip().splitlines()[0] if outcome.detail.strip() else ""
            line += f" [dim]({escape(shorten(first, 160))})[/]"
        self.console.print(line)

    def output(self, title: str, text: str) -> None:
        self.console.print(Panel(escape(text.rstrip() or "(no output)"), title=escape(title), border_style="red"))
