"""``perfpilot optimize``: propose, test and verify changes; keep only what is proven better.

Exit codes: 0 done; 3 stopped early on an error after proposals were tried (the report
and perfpilot.patch hold everything accepted before it; the error is on one line and in
the report); 130 interrupted (Ctrl-C, partial report); 125 perfpilot could not start or
verify anything (bad config, failing baseline, unreachable backend on the first call).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape

from perfpilot.config import Settings, load_settings
from perfpilot.agent.proposers import choose_proposer
from perfpilot.errors import ConfigError, PerfpilotError

EXIT_STOPPED_EARLY = 3

def _project_dir(settings: Settings, config_file: Path | None) -> Path:
    if config_file is not None:
        return config_file.resolve().parent
    if settings.source:
        return Path(settings.source).resolve().parent
    return Path.cwd().resolve()


@click.command()
@click.option("--run", "run_command", default=None, metavar="CMD", help="The command to make better (e.g. \"python bench.py\").")
@click.option("--test", "test_command", default=None, metavar="CMD", help="The command that must keep passing (e.g. \"pytest -q\").")
@click.option("--objective", default=None, help="What to minimise: wall, cpu, peak_rss, energy, gpu_memory, reported.<name>...")
@click.option("--guard", "guards", multiple=True, metavar="METRIC=LIMIT", help="A metric that may not get worse, e.g. peak_rss=+10% (repeatable).")
@click.option("--budget", type=int, default=None, help="Most proposals to try (default 8).")
@click.option("--time-budget", default=None, metavar="DURATION", help="Stop starting new proposals after this long (e.g. 10m).")
@click.option("--max-failures", type=int, default=None, help="Stop after this many failed proposals in a row (default 4).")
@click.option("--proposer", type=click.Choice(["llm", "knobs"]), default=None, help="Default: llm when a backend is set, else knobs.")
@click.option("--backend", default=None, help="LLM backend: openai or mock.")
@click.option("--model", default=None, help="Model name for the backend (default gpt-4.1).")
@click.option("--base-url", default=None, help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1.")
@click.option("--mock-replies", default=None, type=click.Path(path_type=Path), help="JSON list of replies for --backend mock.")
@click.option("--runs", type=int, default=None, help="Most runs per side when verifying (default 10).")
@click.option("--min-runs", type=int, default=None, help="Fewest runs per side before stopping early (default 5).")
@click.option("--threshold", default=None, metavar="PCT", help="Smallest change that counts, e.g. 2% (default: from the noise).")
@click.option("--output-check", default=None, metavar="MODE",
              help="auto (default: exact when the baseline's stdout is deterministic), ignore, exact, numeric[:rtol], "
                   "reported.<name>[:tol] or command:<cmd>.")
@click.option("--test-repeats", type=int, default=None, metavar="N",
              help="Test runs per candidate, each with its own PYTHONHASHSEED (default 3); any failure rejects.")
@click.option("--protect", "protect", multiple=True, metavar="GLOB", help="More files candidates may not touch (repeatable).")
@click.option("--context-tokens", type=int, default=None, help="Token budget for the LLM context (default 12000).")
@click.option("--output-dir", type=click.Path(path_type=Path), default=None,
              help="Where to write the report and patch (default: .perfpilot/ in the project, git-ignored).")
@click.option("--sandbox", type=click.Choice(["auto", "on", "off"]), default=None, help="Run candidates under bubblewrap: workspace writable, loopback only (default auto: where bwrap works).")
@click.option("--apply", "apply_result", is_flag=True, help="Apply the accepted changes to the project (clean git tree only).")
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None, help="Config file (pyproject.toml or perfpilot.toml).")
@click.option("-q", "--quiet", is_flag=True, help="Only the final summary.")
def optimize(run_command: str | None, test_command: str | None, objective: str | None, guards: tuple[str, ...],
             budget: int | None, time_budget: str | None, max_failures: int | None, proposer: str | None,
             backend: str | None, model: str | None, base_url: str | None, mock_replies: Path | None,
             runs: int | None, min_runs: int | None, threshold: str | None, output_check: str | None,
             test_repeats: int | None, protect: tuple[str, ...], context_tokens: int | None, output_dir: Path | None,
             sandbox: str | None, apply_result: bool,
             config_file: Path | None, quiet: bool) -> None:
    """Propose changes, apply each in an isolated copy, run the tests (several hash seeds),
    re-measure, and keep only what is proven better. Writes optimize-report.json/.html and
    perfpilot.patch into .perfpilot/; the project itself is changed only with --apply.
    Exit 3: stopped early on an error, with what was won kept in the report and patch.

    \b
      perfpilot optimize --run "python bench.py" --test "pytest -q" --objective wall --budget 8
      perfpilot optimize --backend openai --model gpt-4.1 --base-url http://127.0.0.1:8000/v1
      perfpilot optimize --backend mock --mock-replies replies.json
    """
    from perfpilot.agent import report
    from perfpilot.agent.loop import Optimizer
    from perfpilot.agent.progress import TerminalProgress
    from perfpilot.agent.workspace import apply_to_project, git_dirty
    from perfpilot.registry import build_plugin_manager

    console = Console(stderr=True)
    overrides: dict[str, Any] = dict(run=run_command, test=test_command, objective=objective, budget=budget,
                                     time_budget=time_budget, max_failures=max_failures, backend=backend, model=model,
                                     base_url=base_url, runs=runs, min_runs=min_runs, threshold=threshold,
                                     output_check=output_check, context_tokens=context_tokens, test_repeats=test_repeats,
                                     sandbox=sandbox,
                                     mock_replies=str(mock_replies.resolve()) if mock_replies else None)
    settings = _with_flags(load_settings(config_file=config_file, overrides=overrides), guards, protect)
    project = _project_dir(settings, config_file)
    out_dir = (output_dir or project / report.DEFAULT_DIR).resolve()
    report.prepare_dir(out_dir, own=output_dir is None)  # an unwritable folder is found before any run
    if apply_result:
        _check_clean(project)

    plugin_set = build_plugin_manager()
    chosen, description = choose_proposer(settings, plugin_set, proposer)
    progress = TerminalProgress(console, quiet=quiet)
    optimizer = Optimizer(settings, project, chosen, progress=progress, plugin_set=plugin_set,
                          proposer_name=description)
    if optimizer.sandbox.note:
        console.print(f"[yellow]note:[/] {escape(optimizer.sandbox.note)}", soft_wrap=True)
    if not quiet:
        console.print(f"[bold cyan]perfpilot optimize[/] {escape(str(project))}: objective [bold]{settings.objective}[/]"
                      + (f", guards {settings.guards}" if settings.guards else "")
                      + f", proposer {escape(description)}, budget {settings.budget}")
    with progress:
        result = optimizer.run()
    written = report.write(result, out_dir, own=output_dir is None)
    _summary(console, result, written, said=(optimizer.sandbox.note,))
    if result.interrupted:
        console.print("[yellow]interrupted: the workspace was removed; partial report written[/]")
        sys.exit(130)
    if result.error:
        kept = f"{len(result.accepted)} accepted change(s) kept in {written['patch']}" if "patch" in written \
            else "no change had been accepted"
        raise PerfpilotError(f"stopped early: {result.error} ({kept}; report {written['json']})",
                             exit_code=EXIT_STOPPED_EARLY)
    if apply_result and result.patch.strip():
        dirty = git_dirty(project)
        if dirty:
            raise ConfigError(f"{project} changed while optimising; not applying", hint=f"apply {written['patch']} by hand")
        apply_to_project(project, result.patch)
        console.print(f"[green]applied[/] {len(result.accepted)} accepted change(s) to {escape(str(project))}")
    if result.final_state.env or result.final_state.knobs:
        console.print(f"[bold]to keep the gain, run:[/] {escape(report.build(result)['final']['command'])}")


def _with_flags(settings: Settings, guards: tuple[str, ...], protect: tuple[str, ...]) -> Settings:
    """The settings with --guard and --protect added, and mock replies found next to the config."""
    if guards:
        parsed = dict(settings.guards)
        for guard in guards:
            metric, sep, limit = guard.partition("=")
            if not sep or not metric.strip() or not limit.strip():
                raise click.BadParameter(f"expected METRIC=LIMIT like peak_rss=+10%, got {guard!r}", param_hint="--guard")
            parsed[metric.strip()] = limit.strip()
        settings = settings.replace(guards=parsed)
    if protect:
        settings = settings.replace(protected=[*settings.protected, *protect])
    if settings.mock_replies and not Path(settings.mock_replies).is_absolute() and settings.source:
        settings = settings.replace(mock_replies=str(Path(settings.source).parent / settings.mock_replies))
    return settings


def _check_clean(project: Path) -> None:
    from perfpilot.agent.workspace import git_dirty

    dirty = git_dirty(project)
    if dirty is None:
        raise ConfigError(f"--apply needs a git work tree, and {project} is not one",
                          hint="run without --apply and use perfpilot.patch")
    if dirty:
        raise ConfigError(f"--apply needs a clean git tree, but {project} has {len(dirty)} uncommitted "
                          f"change(s) (e.g. {dirty[0][3:]})", hint="commit or stash them, or run without --apply")


def _summary(console: Console, result: Any, written: dict[str, Path], said: tuple[str | None, ...] = ()) -> None:
    from perfpilot.agent.figures import ci_label

    cumulative = result.cumulative
    if cumulative:
        v = cumulative["verdict"]
        console.print(f"[bold green]{result.objective} ×{v['ratio']:.3f}[/] ({ci_label(v)} {v['ci_low']:.3f}–{v['ci_high']:.3f}) "
                      f"with {len(result.accepted)} accepted change(s); {result.verification_runs} verification runs; "
                      f"{result.duration_s:.1f} s")
    else:
        console.print(f"no change was proven better ({len(result.outcomes)} proposals, {result.duration_s:.1f} s)")
    for note in result.notes:  # output not compared, a dropped change, ...: said once, here
        if note not in said:
            console.print(f"[yellow]note:[/] {escape(note)}")
    console.print(f"[dim]stopped: {escape(result.stop_reason or '-')}; wrote "
                  + ", ".join(escape(str(p)) for p in written.values()) + "[/]")
