"""What the side-by-side benchmark scripts share besides their clients: arguments, the order of
contenders in a round, peer rows that could not run, and publishing the result.

Every script takes `--quick` (a short run for development: fewer rounds, shorter requests),
`--threads T` (the CPU threads of every contender; default: mmserve's own default, half the
cores) and `--json PATH` (where `bench/run` collects the result). It prints its tables as
markdown at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from results import Result, render

T = TypeVar("T")
STOP_S = 15  # seconds kept for stopping the servers after the last round


def parse_args(
    doc: str | None, extra: Callable[[argparse.ArgumentParser], None] | None = None
) -> argparse.Namespace:
    """--quick, --threads, --json, and what `extra` adds."""
    from mmserve.replicas.process import default_threads

    threads = default_threads()
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    parser.add_argument("--quick", action="store_true", help="a short run, for development")
    parser.add_argument(
        "--threads",
        type=int,
        default=threads,
        help=f"CPU threads of every contender (default {threads}: mmserve's, half the cores)",
    )
    parser.add_argument("--json", type=Path, help="also write the result here (for bench/run)")
    parser.add_argument(
        "--budget",
        type=float,
        help="seconds it may take: no round starts that would end past them (bench/run sets it)",
    )
    if extra is not None:
        extra(parser)
    args = parser.parse_args()
    # Rounds must end this much before the budget: the servers still have to stop.
    args.deadline = None if args.budget is None else time.monotonic() + args.budget - STOP_S
    return args


def command() -> str:
    """The command that reruns this script alone, from the repository root (less --json)."""
    args: list[str] = []
    skip = False
    for arg in sys.argv[1:]:
        if not skip and arg != "--json" and not arg.startswith("--json="):
            args.append(arg)
        skip = arg == "--json"
    return shlex.join([".venv/bin/python", f"bench/{Path(sys.argv[0]).name}", *args])


def effective(model: dict[str, Any], *keys: str) -> dict[str, Any]:
    """The settings mmserve will run `model` (a config entry) with, defaults filled in: what the
    report states, read from mmserve's own config model so that it follows a change of default.
    A key this version of mmserve does not have is left out."""
    from mmserve.config import ModelSpec

    spec = ModelSpec.model_validate(model)
    return {key: getattr(spec, key) for key in keys if hasattr(spec, key)}


def order(names: Sequence[str], round_: int) -> list[str]:
    """The contenders' order in round `round_`: rotated every round, reversed every other one,
    so that each runs first, middle and last in turn and drift hits all alike."""
    shift = round_ % len(names)
    rotated = [*names[shift:], *names[:shift]]
    return rotated if round_ % 2 == 0 else rotated[::-1]


def first_line_of_failure(exc: BaseException) -> str:
    """A short reason for a table's note: the exception, and the last line of a quoted log."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"[:300]


@dataclass
class Failures:
    """Contenders that could not be installed, started or run, with the reason for each."""

    reasons: dict[str, str] = field(default_factory=dict)

    def note(self, name: str, prefix: str = "not measured") -> str:
        """The note for the contender's row: why it has no figures, or nothing."""
        return f"{prefix}: {self.reasons[name]}" if name in self.reasons else ""

    @contextlib.contextmanager
    def guard(self, name: str) -> Iterator[None]:
        """Run a contender's set-up; on failure record why (and print it) instead of raising."""
        try:
            yield
        except Exception as exc:  # a peer failing must not stop the others: its row says why
            self.reasons[name] = first_line_of_failure(exc)
            print(f"  {name}: not available: {self.reasons[name]}")


def run_rounds(
    contenders: dict[str, Callable[[], T]],
    rounds: int,
    failures: Failures,
    show: Callable[[str, str, T], None],
    warm_ups: dict[str, Callable[[], T]] | None = None,
    deadline: float | None = None,
) -> dict[str, list[T]]:
    """One warm-up call of each contender (of its entry in `warm_ups` if given: something
    shorter), then `rounds` rounds, each calling every contender once in `order`. A contender
    that raises is dropped from then on, its reason recorded in `failures`; the others go on.
    With a `deadline` (time.monotonic()), a round that would end past it (judged by the last
    round's length) is not started, but one round always runs. Returns each contender's
    measured samples, by name: as many as rounds ran."""
    samples: dict[str, list[T]] = {name: [] for name in contenders}
    live = list(contenders)
    last = 0.0  # seconds the last round took
    for round_ in range(rounds + 1):
        began = time.monotonic()
        if round_ > 1 and deadline is not None and began + last > deadline:
            print(f"  stopping after {round_ - 1} rounds: the next would overrun the time budget")
            break
        label = f"round {round_}" if round_ else "warm-up"
        for name in order(live, round_) if live else []:
            call = contenders[name] if round_ or not warm_ups else warm_ups[name]
            try:
                sample = call()
            except Exception as exc:  # a contender failing must not stop the others
                failures.reasons[name] = f"failed during the run: {first_line_of_failure(exc)}"
                print(f"  {label:8} {name}: {failures.reasons[name]}")
                live.remove(name)
                continue
            if round_:
                samples[name].append(sample)
            show(label, name, sample)
        last = time.monotonic() - began
    return samples


def rounds_done(samples: dict[str, list[Any]], asked: int) -> str:
    """'N rounds', saying so when the time budget cut the run short of the `asked` rounds."""
    done = max((len(runs) for runs in samples.values()), default=0)
    cut = f" (of {asked} asked: stopped by the time budget)" if done < asked else ""
    return f"{done} round{'s' if done != 1 else ''}{cut}"


def publish(result: Result, args: argparse.Namespace, started: float) -> None:
    """Stamp the command and duration, print the markdown, write the JSON if asked."""
    result.command = command()
    result.seconds = time.monotonic() - started
    print()
    print(render(result))
    if args.json is not None:
        result.save(args.json)


def run_benchmark(
    result: Result, args: argparse.Namespace, measure: Callable[[Result], None]
) -> None:
    """`measure(result)` fills the result in; an exception becomes its `error` (the traceback is
    printed). Then publish it and exit: 0, or 1 if the benchmark did not complete."""
    started = time.monotonic()
    try:
        measure(result)
    except Exception as exc:  # the report says the benchmark failed, and why
        traceback.print_exc()
        result.error = first_line_of_failure(exc)
    publish(result, args, started)
    sys.exit(1 if result.error else 0)
