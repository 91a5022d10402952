"""``perfpilot compare``: two commands, or two sets of saved Profiles, judged with statistics."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from perfpilot.cli.options import collector_options, settings_from
from perfpilot.errors import EXIT_USAGE, PerfpilotError
from perfpilot.profilers.metrics import check_metric_names, metric_kind
from perfpilot.profilers.profile import Profile
from perfpilot.profilers.renderers.terminal import human_bytes, human_seconds

if TYPE_CHECKING:
    from perfpilot.config import Settings
    from perfpilot.profilers.measure import Comparison
    from perfpilot.profilers.stats import Verdict

# Judged whenever every run has them; --metric makes a metric required instead.
DEFAULT_EXTRA = ("cpu", "peak_rss", "energy")
SEPARATOR = "vs"
STYLES = {"faster": "bold green", "smaller": "bold green", "slower": "bold red", "larger": "bold red",
          "no change": "dim", "inconclusive": "yellow"}


class UsageProblem(PerfpilotError):
    exit_code = EXIT_USAGE


# ------------------------------------------------------------------ inputs


def _is_profile_arg(arg: str) -> bool:
    return arg == SEPARATOR or arg.endswith(".json") or Path(arg).is_dir()


def split_profile_sets(args: Sequence[str]) -> tuple[list[Path], list[Path]]:
    """``a/*.json b/*.json``, ``dirA dirB`` or ``a1.json a2.json vs b1.json`` -> (A files, B files)."""
    if SEPARATOR in args:
        at = list(args).index(SEPARATOR)
        groups = [list(args[:at]), list(args[at + 1:])]
        if SEPARATOR in groups[1]:
            raise UsageProblem(f"`{SEPARATOR}` given more than once", hint="separate exactly two sets")
    elif len(args) == 2 and all(Path(a).is_dir() for a in args):
        groups = [[str(a)] for a in args]
    else:
        by_folder: dict[Path, list[str]] = {}
        for arg in args:
            by_folder.setdefault(Path(arg).parent, []).append(arg)
        if len(by_folder) != 2:
            raise UsageProblem(
                f"cannot tell which of the {len(args)} profiles are A and which are B "
                f"(they are in {len(by_folder)} folder{'s' if len(by_folder) != 1 else ''})",
                hint=f"put the sets in two folders (perfpilot compare base/*.json new/*.json) or separate them with `{SEPARATOR}`",
            )
        groups = list(by_folder.values())
    sets: list[list[Path]] = []
    for group in groups:
        files: list[Path] = []
        for arg in group:
            path = Path(arg)
            files.extend(sorted(path.glob("*.json")) if path.is_dir() else [path])
        sets.append(files)
    return sets[0], sets[1]


def _metrics(option: str | None) -> tuple[list[str], tuple[str, ...]]:
    """(required metrics, optional extras)."""
    if option is None:
        return ["wall"], DEFAULT_EXTRA
    names = [part.strip() for part in option.split(",")]
    check_metric_names(names)
    return names, ()


# ----------------------------------------------------------------- output


def _value(metric: str, value: float, source: str) -> str:
    kind = metric_kind(metric)
    if kind == "time":
        return human_seconds(value)
    if kind == "size":
        return human_bytes(value)
    if kind == "count" and abs(value) >= 1e6:
        return f"{value / 1e9:.4g}G" if abs(value) >= 1e10 else f"{value / 1e6:.2f}M"
    if metric == "energy" or metric.startswith("energy."):
        return f"{value:.3g} J" + ("*" if source == "estimate" else "")
    return f"{value:.4g}"


def _pct(fraction: float) -> str:
    return f"{fraction:.0%}" if fraction >= 0.1 else f"{fraction:.1%}"


def interval_header(verdicts: dict[str, Verdict]) -> str:
    """``B/A [98.3% CI]``: the level the intervals were computed at (``[CI]`` and a per-row
    level when they differ; a near-deterministic row shows a noise bound, not a CI)."""
    names = {v.interval_name for v in verdicts.values()}
    return f"B/A [{names.pop()}]" if len(names) == 1 else "B/A [interval]"


def _interval(v: Verdict, header: str) -> Text:
    text = f"{v.ratio:.3f} [{v.ci_low:.3f}, {v.ci_high:.3f}]"
    if header == "B/A [interval]":
        text += f" {v.interval_name}"
    return Text(text)  # Text: brackets are not markup


def verdict_table(verdicts: dict[str, Verdict], primary: str) -> Table:
    """One row per metric: medians, ratio with its interval, p, runs, noise, verdict."""
    table = Table(box=None, padding=(0, 2), header_style="bold")
    header = interval_header(verdicts)
    for column, justify in (("metric", "left"), ("median A", "right"), ("median B", "right"),
                            (header, "right"), ("p", "right"), ("runs", "right"), ("noise A/B", "right"),
                            ("verdict", "left")):
        table.add_column(escape(column), justify=justify)  # type: ignore[arg-type]
    for name, v in verdicts.items():
        style = "yellow" if v.source == "estimate" else STYLES.get(v.verdict, "")
        table.add_row(
            Text(name + v.source_suffix, style="bold" if name == primary else ""),
            _value(name, v.median_a, v.source),
            _value(name, v.median_b, v.source),
            _interval(v, header),
            f"{v.p_value:.2g}",
            f"{v.runs_a}/{v.runs_b}",
            f"±{_pct(v.noise_a)}/±{_pct(v.noise_b)}",
            Text(v.label, style=style),
        )
    return table


def render_terminal(comparison: Comparison, console: Console) -> None:
    labels = comparison.labels
    console.print(f"[bold]A[/]: {escape(labels[0])}\n[bold]B[/]: {escape(labels[1])}")
    console.print(verdict_table(comparison.verdicts, comparison.primary))
    primary = comparison.primary_verdict
    level = f"{primary.interval_name} ({primary.source})" if primary.source != "measured" else primary.interval_name
    if comparison.plan is not None:
        how = {"futility": "stopped early for futility", "clear": "stopped early: the verdict was clear"}.get(
            comparison.stop_reason, "ran to --runs") if comparison.stopped_early else "ran to --runs"
        console.print(f"[dim]{comparison.runs} runs per side ({how}); {comparison.plan.describe()}; "
                      f"{comparison.primary}: {level}, threshold {primary.threshold:.1%}[/]")
    else:
        console.print(f"[dim]saved runs, one look; {comparison.primary}: {level}, threshold {primary.threshold:.1%}[/]")
    if any(v.source == "estimate" for v in comparison.verdicts.values()):
        console.print("[yellow]* energy from the power collector's estimate (a model, not a meter): "
                      "shown for information, it decides nothing[/]")
    for note in comparison.notes:
        console.print(f"[yellow]note[/]: {escape(note)}")
    for name, v in comparison.verdicts.items():
        for note in v.notes:
            console.print(f"[yellow]note[/] ({escape(name)}): {escape(note)}")


def _write_outputs(comparison: Any, json_path: str | None, html_path: Path | None, err: Console) -> None:
    written = []
    if json_path is not None:
        text = json.dumps(comparison.to_dict(), indent=1) + "\n"
        if json_path == "-":
            sys.stdout.write(text)
        else:
            Path(json_path).write_text(text, encoding="utf-8")
            written.append(json_path)
    if html_path is not None:
        from perfpilot.profilers.renderers import compare_html

        compare_html.write(comparison, html_path)
        written.append(str(html_path))
    if written:
        err.print(f"[dim]wrote {', '.join(written)}[/]")


def _save_runs(comparison: Any, folder: Path) -> None:
    for side, profiles in (("a", comparison.a), ("b", comparison.b)):
        target = folder / side
        target.mkdir(parents=True, exist_ok=True)
        for index, profile in enumerate(profiles, 1):
            profile.save(target / f"run-{index:03d}.json")


def _compare_saved(args: Sequence[str], settings: Settings, required: list[str], extra: Sequence[str],
                   allow_cross_host: bool) -> Comparison:
    from perfpilot.profilers import measure

    files_a, files_b = split_profile_sets(args)
    return measure.compare_profiles(
        [Profile.load(f) for f in files_a], [Profile.load(f) for f in files_b], metrics=required,
        threshold=settings.threshold, confidence=settings.confidence, names_a=[str(f) for f in files_a],
        names_b=[str(f) for f in files_b], extra_metrics=extra, allow_cross_host=allow_cross_host)


def _compare_commands(args: Sequence[str], settings: Settings, required: list[str], extra: Sequence[str], *,
                      warmup: int, cpus: str | None, shell: bool, show: bool, err: Console) -> Comparison:
    """Run and judge the two commands, with a progress bar on a terminal."""
    from perfpilot.profilers import measure
    from perfpilot.registry import build_plugin_manager

    if len(args) != 2:
        raise UsageProblem(f"expected two commands (A and B), got {len(args)} arguments",
                           hint='quote each command: perfpilot compare -- "python old.py" "python new.py"')
    if settings.runs < 2:
        raise UsageProblem(f"--runs must be at least 2, got {settings.runs}", hint="use --runs 10")
    if warmup < 0:
        raise UsageProblem(f"--warmup cannot be negative, got {warmup}")
    pinned_cpus = measure.parse_cpus(cpus)
    arms = [measure.Arm(command=a, label=a, shell=shell) for a in args]
    for arm in arms:
        arm.argv()  # an empty command is an error before any run
    total = 2 * (warmup + settings.runs)
    progress = Progress(TextColumn("[bold cyan]perfpilot compare[/]"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.description}"), TimeElapsedColumn(), console=err, transient=True,
                        disable=not show)
    task = progress.add_task("warming up", total=total)

    def on_run(side: str, index: int, _profile: Profile) -> None:
        what = "warm-up" if index == 0 else f"run {index}/{settings.runs}"
        progress.update(task, advance=1, description=f"{side} {what}")

    options = measure.CompareOptions(
        metrics=required, extra_metrics=extra, settings=settings, max_runs=settings.runs, min_runs=settings.min_runs,
        warmup=warmup, threshold=settings.threshold, confidence=settings.confidence, on_run=on_run,
        capture_output=True, cpus=pinned_cpus, plugin_set=build_plugin_manager())
    with progress:
        comparison = measure.compare(arms[0], arms[1], options)
        progress.update(task, completed=total)
    return comparison


# ---------------------------------------------------------------- command


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--runs", type=int, default=None, metavar="N",
              help="Most measured runs per side (default 10). Fewer are used when the verdict is clear early.")
@click.option("--min-runs", type=int, default=None, metavar="N", help="Runs per side before the first look (default 5).")
@click.option("--warmup", type=int, default=1, show_default=True, help="Discarded warm-up runs per side.")
@click.option("--metric", "metric", default=None, metavar="NAMES",
              help="Comma list: wall, cpu, peak_rss, io, io_read, io_write, energy, energy.<domain>, gpu_memory, "
                   "gpu_util, instructions, any summary key (reported.loss) or series metric. The first decides when to stop. "
                   "Default: wall, plus cpu, peak_rss and energy where measured.")
@click.option("--threshold", default=None, metavar="PCT",
              help="Smallest change that counts, e.g. 2%. Default: an eighth of the noise (robust CV), at least 2%, at most 10%; "
                   "1% for a near-deterministic metric (instructions).")
@click.option("--confidence", type=float, default=None, help="Overall confidence (default 0.95).")
@click.option("--cpus", default=None, metavar="LIST", help="Pin every run to these CPUs (taskset), e.g. 0 or 2-3.")
@click.option("--shell", is_flag=True, help="Run each command through sh -c (pipes, &&, redirections).")
@click.option("--json", "json_path", default=None, metavar="PATH", help="Write the verdicts as JSON (- for stdout).")
@click.option("--html", "html_path", type=click.Path(path_type=Path), default=None,
              help="Write an HTML page with the distributions of A and B.")
@click.option("--save", "save_dir", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="Keep every run's Profile under DIR/a and DIR/b (compare them again later).")
@click.option("--allow-cross-host", is_flag=True, help="Saved Profiles: allow sets recorded on different machines.")
@click.option("--fail-on-regression", is_flag=True, help="Exit 1 when the first metric got worse (for CI).")
@collector_options
@click.option("--timeout", default=None, metavar="DURATION", help="Kill a run after this long (it then counts as failed).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.argument("args", nargs=-1)
def compare(runs: int | None, min_runs: int | None, warmup: int, metric: str | None, threshold: str | None,
            confidence: float | None, cpus: str | None, shell: bool, json_path: str | None, html_path: Path | None,
            save_dir: Path | None, allow_cross_host: bool, fail_on_regression: bool, config_file: Path | None,
            interval: str | None, plugins: str | None, disable: str | None, timeout: str | None, quiet: bool,
            args: tuple[str, ...]) -> None:
    """Compare two commands (A, then B) or two sets of saved Profiles.

    \b
      perfpilot compare --runs 10 -- "python old.py" "python new.py"
      perfpilot compare --metric cpu,peak_rss --cpus 0 -- "python a.py" "python b.py"
      perfpilot compare base/*.json new/*.json       (or: base/ new/, or: a1.json a2.json vs b1.json)

    Both commands run in fresh processes: a warm-up each, then A B A B ...,
    every run profiled by the collectors. Each metric gets: median A, median B, the
    ratio B/A with a bootstrap confidence interval, a Mann-Whitney U p-value, runs,
    noise (robust spread of each side) and a verdict: faster/slower (time),
    smaller/larger (others), no change (the CI lies within the threshold), or
    inconclusive.

    \b
    Early stopping with the false-positive rate kept: the runs are looked at only
    at planned counts, doubling up to --runs (5 and 10 for --runs 10), and the
    overall alpha (1 - confidence) is split across those looks in proportion to
    their runs (a weighted Bonferroni: 0.0167 at 5, 0.0333 at 10), so the chance
    that any look calls a false win stays at most 1 - confidence. A look stops the
    runs when the verdict is clear; otherwise they go on to --runs.

    A near-deterministic metric (instructions) whose runs agree within 0.5%
    is decided on the ratio with that spread as its noise bound, against a 1%
    threshold, from 3 runs per side (an extra look that spends no alpha).

    A run that exits non-zero stops the comparison with an error naming it.
    Energy that is only an estimate is labelled so and never decides a verdict.
    """
    err = Console(stderr=True)
    settings = settings_from(config_file, interval=interval, plugins=plugins, disable=disable, timeout=timeout,
                             runs=runs, min_runs=min_runs, threshold=threshold, confidence=confidence)
    required, extra = _metrics(metric)
    if not args:
        raise UsageProblem("nothing to compare", hint='give two commands after --, e.g. perfpilot compare -- "python a.py" "python b.py"')
    if all(_is_profile_arg(a) for a in args):
        if cpus or shell or save_dir:
            raise UsageProblem("--cpus, --shell and --save apply to commands, not to saved Profiles")
        comparison = _compare_saved(args, settings, required, extra, allow_cross_host)
    else:
        comparison = _compare_commands(args, settings, required, extra, warmup=warmup, cpus=cpus, shell=shell,
                                       show=err.is_terminal and not quiet, err=err)
        if save_dir is not None:
            _save_runs(comparison, save_dir)

    to_stderr = json_path == "-"
    probe = Console(stderr=to_stderr)
    # Piped output would otherwise wrap the table at 80 columns.
    out = probe if probe.is_terminal else Console(stderr=to_stderr, width=160)
    render_terminal(comparison, out)
    _write_outputs(comparison, json_path, html_path, err)
    if fail_on_regression and comparison.primary_verdict.regressed:
        sys.exit(1)
