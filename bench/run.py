"""Every side-by-side benchmark, one after another, then the generated part of docs/benchmarks.md.

  1. chat_one.py    chat, one client: streamed tokens/s and TTFT (mmserve, llama_cpp.server,
                    llama-cpp-python direct)
  2. chat_many.py   chat, 8 concurrent clients: aggregate tokens/s, p50/p99 latency (the same)
  3. embeddings.py  embeddings, 1 and 32 clients: sentences/s (mmserve, Infinity,
                    sentence-transformers direct)
  4. swap.py        model swap with room for one model: requests/s, latency (mmserve,
                    llama_cpp.server, direct)
  5. gateway.py     gateway overhead: a fast upstream directly, through mmserve's `http` model
                    and through LiteLLM's proxy; server CPU per request; `/health`

First the peers are installed if they are not yet (bench/.peers/, from PyPI: see peers.py; the
first install takes minutes and is not part of the time budget). Each benchmark then runs as its
own process (`.venv/bin/python bench/NAME.py --json FILE --budget S`, its output shown as it
goes), within its own time cap and the run's budget (19.5 minutes): it starts no round that
would end past its budget (its notes then say how many rounds ran), one that still runs over is
stopped and its section says so, and a later one left without time says it was skipped. A
peer that could not be installed or run keeps its row, with the reason.

At the end it prints the section and writes it into docs/benchmarks.md, between the markers
`<!-- bench/run:begin -->` and `<!-- bench/run:end -->` (inserted after the introduction if they
are missing); the rest of the file is left as it is. A `--quick` run (about 3 minutes, for
development) only prints, unless `--write` is given, and its section says it was quick.

    bench/run [--quick] [--only NAME ...] [--threads T] [--write | --no-write]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import psutil

from common import cpu_model
from peers import Installed, ensure, infinity, litellm, llama_server
from results import Result, render, wrap

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
DOCS = REPO / "docs" / "benchmarks.md"
BEGIN = "<!-- bench/run:begin -->"
END = "<!-- bench/run:end -->"
BUDGET_S = 19.5 * 60  # the whole run, peer installs aside, stays under 20 minutes
STOP_GRACE_S = 30  # after SIGINT, for a benchmark to stop its servers
STOP_MARGIN_S = 20  # a benchmark's own budget ends this long before it is stopped


@dataclass(frozen=True)
class Benchmark:
    key: str
    script: str
    title: str
    cap_s: float  # a full run; a quick run gets half


BENCHMARKS = [
    Benchmark("chat-one", "chat_one.py", "1. Chat, one client", 240),
    Benchmark("chat-many", "chat_many.py", "2. Chat, 8 concurrent clients", 360),
    Benchmark("embeddings", "embeddings.py", "3. Embeddings, 1 and 32 concurrent clients", 240),
    Benchmark("swap", "swap.py", "4. Model swap", 240),
    Benchmark("gateway", "gateway.py", "5. Gateway overhead", 200),
]


def run_one(bench: Benchmark, args: argparse.Namespace, out: Path, timeout: float) -> Result:
    """Run one benchmark script in its own process group; its result, or why there is none."""
    command = [sys.executable, str(BENCH / bench.script), "--json", str(out)]
    command += ["--threads", str(args.threads), *(["--quick"] if args.quick else [])]
    # Its own budget ends before the limit: it stops starting rounds in time to report.
    command += ["--budget", f"{timeout - STOP_MARGIN_S:.0f}"]
    started = time.monotonic()
    # Its own process group: on a timeout the benchmark and the servers it started are stopped
    # together (SIGINT first, so that its context managers stop the servers cleanly).
    proc = subprocess.Popen(command, cwd=REPO, start_new_session=True)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_group(proc)
        return failed(bench, f"stopped after its time limit of {timeout:.0f} s", started)
    except KeyboardInterrupt:
        stop_group(proc)
        raise
    if out.exists():
        return Result.load(out)
    return failed(bench, f"exited with status {proc.returncode} and no result", started)


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=STOP_GRACE_S)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # and whatever of the group is left
    proc.wait()


def failed(bench: Benchmark, why: str, started: float) -> Result:
    result = Result(bench.key, bench.title, "", error=why)
    result.command = f".venv/bin/python bench/{bench.script}"
    result.seconds = time.monotonic() - started
    return result


# --- the section ---------------------------------------------------------------------------


def versions(peers: list[Installed]) -> str:
    def of(package: str) -> str:
        try:
            return version(package)
        except PackageNotFoundError:
            return "not installed"

    ours = (
        f"mmserve {of('mmserve')}; in its venv (and the direct contenders'): llama-cpp-python "
        f"{of('llama-cpp-python')}, sentence-transformers {of('sentence-transformers')}, torch "
        f"{of('torch')}, httpx {of('httpx')}; python {platform.python_version()}"
    )
    theirs = [
        f"{p.peer.label}'s venv: " + ", ".join(f"{k} {v}" for k, v in p.versions.items())
        for p in peers
        if p.ok
    ]
    return "; ".join([ours, *theirs])


def header(args: argparse.Namespace, peers: list[Installed], took_s: float) -> list[str]:
    memory = psutil.virtual_memory().total / 2**30
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    kind = "A full run"
    if args.quick:
        kind = "**A quick run** (for development: fewer rounds, shorter requests; noisy)"
    items = [
        f"Machine: {platform.machine()}, {os.cpu_count()} cores ({cpu_model()}), "
        f"{memory:.1f} GiB memory, {platform.system()} {platform.release()}.",
        f"Versions: {versions(peers)}.",
        f"Threads: {args.threads} per model for every contender (mmserve's default, half the "
        "cores, unless `--threads`), with the OpenMP settings mmserve gives its model processes "
        "(`OMP_WAIT_POLICY=PASSIVE`).",
        f"Command: `{shlex.join(['bench/run', *sys.argv[1:]])}`, from the repository root.",
        "\"÷ mmserve\" is a contender's figure divided by mmserve's from the same run: above 1 is "
        "more (of a throughput: faster; of a latency: slower). On this shared machine absolute "
        'figures move from one minute to the next: compare the ratios. "others busy" is the '
        "CPU cores other programs kept busy meanwhile (noise).",
        "Peers run from their own virtual environments in bench/.peers/, installed by "
        "`bench/run` from PyPI, on the same model files as mmserve (no model hub).",
        *(
            f"**{peer.peer.label} could not run here:** {peer.problem}"
            for peer in peers
            if not peer.ok
        ),
    ]
    intro = (
        "Generated by `bench/run`; do not edit by hand: the next run rewrites this section. "
        f"{kind} on {when}, {took_s / 60:.1f} minutes."
    )
    title = "## Side by side with the engines and with peer servers"
    return [title, "", wrap(intro), "", *(wrap(item, "- ") for item in items), ""]


def section(
    args: argparse.Namespace, peers: list[Installed], results: list[Result], took: float
) -> str:
    parts = [*header(args, peers, took), *(render(r) for r in results)]
    return "\n".join(parts).rstrip() + "\n"


def write_docs(text: str) -> None:
    """Replace what lies between the markers (inserting them after the intro if missing)."""
    doc = DOCS.read_text()
    if BEGIN not in doc or END not in doc:
        intro_end = doc.index("\n## ")  # the first section after the introduction
        doc = f"{doc[:intro_end]}\n{BEGIN}\n{END}\n{doc[intro_end:]}"
    before, rest = doc.split(BEGIN, 1)
    _, after = rest.split(END, 1)
    DOCS.write_text(f"{before}{BEGIN}\n{text}{END}{after}")
    print(f"\nwrote the generated section of {DOCS.relative_to(REPO)}")


# --- the run ------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    from mmserve.replicas.process import default_threads

    threads = default_threads()
    parser = argparse.ArgumentParser(
        prog="bench/run", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--quick", action="store_true", help="about 3 minutes, for development")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=[b.key for b in BENCHMARKS],
        help="run only these benchmarks (by default all)",
    )
    parser.add_argument(
        "--threads", type=int, default=threads, help=f"threads per model (default {threads})"
    )
    write = parser.add_mutually_exclusive_group()
    write.add_argument("--write", action="store_true", help="write docs/benchmarks.md, even quick")
    write.add_argument("--no-write", action="store_true", help="only print the section")
    return parser.parse_args()


def run_all(chosen: list[Benchmark], args: argparse.Namespace) -> list[Result]:
    """Each benchmark in turn, within its cap and what is left of the run's budget."""
    budget_start = time.monotonic()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-run-") as tmp:
        for n, bench in enumerate(chosen, 1):
            left = BUDGET_S - (time.monotonic() - budget_start)
            limit = min(bench.cap_s / 2 if args.quick else bench.cap_s, left)
            print(f"\n=== {n}/{len(chosen)} {bench.title}: {bench.script}, {limit:.0f} s at most")
            if limit < 30:
                why = "skipped: the run's time budget was spent"
                results.append(failed(bench, why, time.monotonic()))
                continue
            results.append(run_one(bench, args, Path(tmp) / f"{bench.key}.json", limit))
    return results


def main() -> None:
    args = parse_args()
    started = time.monotonic()
    print("peers: checking bench/.peers/ (installing what is missing)...")
    peers = [ensure(llama_server()), ensure(infinity()), ensure(litellm())]
    for peer in peers:
        print(f"  {peer.peer.label}: {'ready' if peer.ok else peer.problem}")
    chosen = [b for b in BENCHMARKS if not args.only or b.key in args.only]
    results = run_all(chosen, args)
    text = section(args, peers, results, time.monotonic() - started)
    print("\n" + "=" * 100 + "\n")
    print(text)
    if args.write or not (args.quick or args.no_write or args.only):
        write_docs(text)
    failures = [r.key for r in results if r.error]
    if failures:
        print(f"not completed: {', '.join(failures)}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
