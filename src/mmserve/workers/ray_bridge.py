"""The Ray bridge: `python -m mmserve.workers.ray_bridge LAUNCH_JSON`, one per Ray replica.

A child of the server that speaks the worker protocol on its stdin/stdout, exactly as a worker
does (so the server's supervisor, pings, crash restarts and stop apply unchanged), and relays
each request to one `ReplicaActor` on the cluster. It is the Ray driver, not the server: Ray's
core worker ends the process that holds it a minute after losing the cluster's GCS ("The program
will terminate"), and shares its fate with the local raylet; in a child, that ends one replica,
which the server restarts or marks failed, and the server keeps serving everything else. A
fresh driver per start also reconnects to a cluster that came back.

    start     ray.init (within connect_timeout), create the actor with the launch's options
              (Ray places it on a node with those resources free), wait for its `ready` (the
              backend loaded on the node), then say `ready` with its node and memory
    requests  chat/complete: the actor's streaming generator, each event relayed as a chunk;
              embed/call: one actor call each; ping: the actor's `stats` (memory, counters)
              and Ray's view of the nodes (a thread asks the GCS every 2 s), in the pong's
              `details`
    cancel    `ray.cancel` on that request's generator ref: the actor stops the generation
    exits     when the actor dies (its process killed, its node gone: its `lifeline` call
              fails at once), with code 3; when the cluster's GCS has not answered for
              connect_timeout s (the cluster is gone), with code 4; on `shutdown` or stdin EOF
              it kills the actor, waits for it to be gone, and exits with 0

Through Ray Client (`ray://`), which has no streaming generators, a stream is polled instead:
the actor buffers events (`open_stream`) and the bridge takes what it has (`take`).

Every exit is `os._exit`: Ray's own atexit shutdown can block for a minute when the cluster is
gone, and an actor owned by this process dies with it anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
import time
from typing import IO, Any

from pydantic import BaseModel, ConfigDict, ValidationError

from mmserve.backends.base import BackendSpec
from mmserve.errors import RequestCancelled, WorkerCrashed
from mmserve.types import WorkerInfo
from mmserve.workers.main import ReplyWriter, brief, claim_stdout, die_with_parent, request_id_of
from mmserve.workers.protocol import Chunk, Pong, Ready, Request, Result, decode_request

__all__ = ["EXIT_ACTOR_DIED", "EXIT_CLUSTER_LOST", "RayLaunch", "main"]

EXIT_ACTOR_DIED = 3
EXIT_CLUSTER_LOST = 4
CLUSTER_CHECK = 2.0  # seconds between two looks at the cluster's nodes (the GCS)
PLACEMENT_NOTICE = 10.0  # seconds between "still waiting for a node" lines while Ray places it
CLIENT_RETRY = 1.0  # seconds before a Ray Client connection that was refused tries again
UNAVAILABLE_RETRY = 0.5  # seconds before asking again after an actor was unavailable
KILL_WAIT = 5.0  # seconds to wait for a killed actor to be gone
POLL_WAIT = 0.5  # seconds one `take` of a polled stream waits for the next event
LOOPBACK = ("127.0.0.1", "localhost", "::1")
_LAST = ("done", "error")  # the types of a stream's last event


class RayLaunch(BaseModel):
    """What one bridge starts: its backend's spec (loaded on the node), where the cluster is,
    and the actor's Ray options (resources, labels, name, runtime_env), built by replicas.ray."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    backend: BackendSpec
    address: str
    namespace: str
    connect_timeout: float
    actor: dict[str, Any]


class BridgeError(Exception):
    """Why the replica could not start (the `load_failed` error the server shows)."""


def host_of(address: str) -> str:
    return address.removeprefix("ray://").rpartition(":")[0]


def connect(launch: RayLaunch) -> Any:
    """Import Ray and join the cluster (blocks; run in a thread with a timeout)."""
    if host_of(launch.address) in LOOPBACK:
        # Ray rewrites a loopback address to this machine's outward IP, so that other machines
        # can reach what it reports; a cluster on loopback only (one machine, `ray start
        # --node-ip-address 127.0.0.1`) is then unreachable. Its switch for one-machine
        # clusters keeps the address as given; it is read when Ray is imported.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    deadline = time.monotonic() + launch.connect_timeout
    while True:
        try:
            ray.init(
                address=launch.address,
                namespace=launch.namespace,
                log_to_driver=True,  # the actor's output comes here, so into the model's log
                logging_level=logging.ERROR,  # not "SIGTERM handler is not set" (a thread)
                configure_logging=True,
            )
            return ray
        except ConnectionAbortedError as exc:
            # Ray Client's server starts one server process per client; of two clients that
            # connect at once, one may get none ("Initialization failure from server"). Its
            # next try gets its own.
            if time.monotonic() + CLIENT_RETRY >= deadline:
                raise
            print(f"ray bridge: Ray Client: {_first_line(exc)}; again", file=sys.stderr)
            with contextlib.suppress(Exception):  # what the failed connection left set up
                ray.shutdown()
            time.sleep(CLIENT_RETRY)


class Bridge:
    """One replica's link to its actor. Everything runs on this process's event loop, but for
    two threads: one reads stdin, one watches the cluster (`_watch_cluster`)."""

    def __init__(self, launch: RayLaunch, writer: ReplyWriter) -> None:
        self.launch = launch
        self.writer = writer
        self.name = launch.backend.name
        self.ray: Any = None
        self.actor: Any = None
        self.client = launch.address.startswith("ray://")  # Ray Client: streams are polled
        self.where: dict[str, Any] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        # Written by the cluster-watching thread (plain assignments: no lock needed).
        self.view: list[dict[str, Any]] = []  # Ray's view of the nodes, and when it was taken
        self.view_at = 0.0
        self.reached = time.monotonic()  # when the GCS last answered
        self.link_error = ""
        self.lines: asyncio.Queue[bytes | None] = asyncio.Queue()

    # ---- start ---------------------------------------------------------------------------------

    async def start(self) -> WorkerInfo:
        """Connect and place the actor; BridgeError with the reason."""
        timeout = self.launch.connect_timeout
        try:
            self.ray = await asyncio.wait_for(asyncio.to_thread(connect, self.launch), timeout)
        except TimeoutError:
            raise BridgeError(
                f"cannot reach the Ray cluster at {self.launch.address} within {timeout:g} s "
                "(connect_timeout)"
            ) from None
        except Exception as exc:
            raise BridgeError(
                f"cannot reach the Ray cluster at {self.launch.address}: {_first_line(exc)}"
            ) from None
        from mmserve.workers.ray_actor import ReplicaActor

        actor_class = self.ray.remote(ReplicaActor)
        self.actor = actor_class.options(**self.launch.actor).remote(
            self.launch.backend.model_dump_json()
        )
        report = await self._placed(self.actor.ready.remote())
        if report.get("error"):
            raise BridgeError(f"model {self.name!r} failed to load: {report['error']['message']}")
        self.where = {k: report[k] for k in ("node_id", "node_ip", "actor_id", "pid")}
        self._say(f"actor {self.where['actor_id']} loaded on node {self.where['node_id']}")
        return WorkerInfo.model_validate(report["info"])

    async def _placed(self, ready: Any) -> dict[str, Any]:
        """The actor's `ready` report, once Ray has placed it and its backend has loaded;
        meanwhile a line in the log now and then (the server's load_timeout bounds the wait)."""
        pending = asyncio.ensure_future(self._get(ready))
        started = time.monotonic()
        while True:
            done, _ = await asyncio.wait({pending}, timeout=PLACEMENT_NOTICE)
            if done:
                break
            self._say(
                f"still waiting after {time.monotonic() - started:.0f} s for Ray to place the "
                f"actor and load the model (it needs {self._needs()})"
            )
        try:
            report: dict[str, Any] = pending.result()
        except self.ray.exceptions.RayError as exc:
            # Ray's reason comes after a line or two of its own (the creation task's error).
            reason = " ".join(line.strip() for line in str(exc).splitlines()[:8] if line.strip())
            raise BridgeError(
                f"the Ray actor of model {self.name!r} did not start: {reason}"
            ) from None
        return report

    def _needs(self) -> str:
        options = self.launch.actor
        keys = ("num_cpus", "num_gpus", "memory", "resources", "label_selector")
        return ", ".join(f"{k} {options[k]}" for k in keys if options.get(k)) or "nothing"

    # ---- serve ---------------------------------------------------------------------------------

    async def serve(self, stdin: IO[bytes]) -> int:
        """Relay requests until stdin closes or `shutdown` (0), the actor dies (3) or the
        cluster is lost (4)."""
        loop = asyncio.get_running_loop()

        def read() -> None:
            for line in stdin:
                loop.call_soon_threadsafe(self.lines.put_nowait, line)
            loop.call_soon_threadsafe(self.lines.put_nowait, None)

        threading.Thread(target=read, name="stdin", daemon=True).start()
        self.reached = time.monotonic()  # it just answered: the actor was placed
        threading.Thread(target=self._watch_cluster, name="cluster", daemon=True).start()
        lifeline = asyncio.ensure_future(self._lifeline())
        lost = asyncio.ensure_future(self._cluster_lost())
        while True:
            line = asyncio.ensure_future(self.lines.get())
            done, _ = await asyncio.wait(
                {line, lifeline, lost}, return_when=asyncio.FIRST_COMPLETED
            )
            if lifeline in done or lost in done:
                line.cancel()
                self._say(lifeline.result() if lifeline in done else lost.result())
                # Its requests fail as their calls do (worker_crashed), if they can in a moment;
                # the server fails those left when this process exits.
                if self.tasks:
                    await asyncio.wait(set(self.tasks.values()), timeout=1.0)
                return EXIT_ACTOR_DIED if lifeline in done else EXIT_CLUSTER_LOST
            received = line.result()
            if received is None or not self._handle(received):
                break
        await self._finish(lifeline)
        return 0

    async def _lifeline(self) -> str:
        """Returns why, once the actor is dead: its `lifeline` call never returns while it
        lives. Unavailable is not dead (a connection that broke, which Ray may restore): ask
        again, and Ray answers dead once it knows."""
        while True:
            try:
                await self._get(self.actor.lifeline.remote())
            except self.ray.exceptions.ActorUnavailableError:
                await asyncio.sleep(UNAVAILABLE_RETRY)
            except self.ray.exceptions.RayError as exc:
                return f"the actor died: {_first_line(exc)}"

    def _watch_cluster(self) -> None:
        """Ask the GCS for the nodes every CLUSTER_CHECK s (on its own thread: a call to a
        GCS that is gone blocks): the nodes' view for the pongs, and proof of the link."""
        while True:
            try:
                self.view = self.nodes()
                self.view_at = time.time()
                self.reached = time.monotonic()
            except Exception as exc:  # a lost link, said by the watchdog below
                self.link_error = _first_line(exc)
            time.sleep(CLUSTER_CHECK)

    async def _cluster_lost(self) -> str:
        """Returns why, once the GCS has not answered for connect_timeout seconds. (An actor's
        calls may hang rather than fail when the whole cluster goes: its death is the GCS's
        to announce, and Ray's driver itself gives the GCS a minute.)"""
        timeout = self.launch.connect_timeout
        while True:
            await asyncio.sleep(CLUSTER_CHECK)
            if time.monotonic() - self.reached >= timeout:
                break
        why = f": {self.link_error}" if self.link_error else ""
        return (
            f"lost the Ray cluster at {self.launch.address}: its GCS did not answer for "
            f"{timeout:g} s{why}"
        )

    async def _finish(self, lifeline: asyncio.Future[Any]) -> None:
        """What was received runs to its end; then the actor is killed and awaited, so that
        its resources are free on its node once this process has exited."""
        if self.tasks:
            await asyncio.wait(set(self.tasks.values()))
        self.ray.kill(self.actor, no_restart=True)
        await asyncio.wait({lifeline}, timeout=KILL_WAIT)

    def _handle(self, line: bytes) -> bool:
        """One line from the server; False means stop serving."""
        if not line.strip():
            return True
        try:
            request = decode_request(line)
        except ValidationError as exc:
            self.writer.error(request_id_of(line), "invalid_request", f"malformed: {brief(exc)}")
            return True
        if request.op == "shutdown":
            return False
        if request.op == "cancel":
            if (task := self.tasks.get(request.id or "")) is not None:
                task.cancel()
            return True
        if request.id is None and request.op != "ping":
            self.writer.error(None, "invalid_request", f"op {request.op!r} needs an id")
            return True
        rid = request.id or ""
        task = asyncio.ensure_future(self._run(request))
        if request.id is not None:
            self.tasks[rid] = task
            task.add_done_callback(lambda _: self.tasks.pop(rid, None))
        return True

    async def _run(self, request: Request) -> None:
        rid = request.id or ""
        if request.op == "ping":
            # No pong when the actor does not answer: the server's heartbeat decides (and the
            # lifeline ends this process first if the actor is dead).
            with contextlib.suppress(self.ray.exceptions.RayError):
                await self._pong(request.id)
            return
        try:
            if request.op in ("chat", "complete"):
                await self._stream(rid, request.op, request.body)
            elif request.op in ("embed", "call"):
                await self._call(rid, request.op, request.body)
            else:
                self.writer.error(rid, "unsupported", f"this model does not serve {request.op!r}")
        except asyncio.CancelledError:
            self.writer.error(rid, RequestCancelled.kind, "cancelled while running")
        except self.ray.exceptions.RayActorError as exc:
            self.writer.error(
                rid,
                WorkerCrashed.kind,
                f"the Ray actor of model {self.name!r} died: {_first_line(exc)}",
            )
        except self.ray.exceptions.RayError as exc:
            self.writer.error(rid, "backend", f"Ray: {_first_line(exc)}")

    async def _stream(self, rid: str, op: str, body: dict[str, Any]) -> None:
        """One generation, its events relayed as they come."""
        events = self._polled(op, body) if self.client else self._streamed(op, body)
        async with contextlib.aclosing(events):
            await self._relay(rid, events)

    async def _relay(self, rid: str, events: Any) -> None:
        async for event in events:
            kind = event.get("type")
            if kind == "error":
                self.writer.error(rid, event["kind"], event["message"])
                return
            if kind == "done":
                self.writer.send(Result(id=rid, data=event))
                return
            self.writer.send(Chunk(id=rid, data=event))
        self.writer.error(rid, "backend", "the actor ended the stream without finishing it")

    async def _streamed(self, op: str, body: dict[str, Any]) -> Any:
        """A Ray streaming generator: one object ref per event, each read as it is produced.
        Leaving (a cancel) cancels the generator's task on the actor."""
        generator = self.actor.generate.options(num_returns="streaming").remote(op, body)
        finished = False
        try:
            async for ref in generator:
                event = await ref
                finished = event.get("type") in _LAST
                yield event
        finally:
            if not finished:
                self.ray.cancel(generator)

    async def _polled(self, op: str, body: dict[str, Any]) -> Any:
        """The same through Ray Client: the actor buffers the events, this takes them."""
        stream = await self._get(self.actor.open_stream.remote(op, body))
        finished = False
        try:
            while True:
                batch = await self._get(self.actor.take.remote(stream, POLL_WAIT))
                for event in batch:
                    finished = event.get("type") in _LAST
                    yield event
        finally:
            if not finished:
                self.actor.close_stream.remote(stream)

    async def _call(self, rid: str, op: str, body: dict[str, Any]) -> None:
        method = self.actor.embed if op == "embed" else self.actor.call
        reply: dict[str, Any] = await self._get(method.remote(body))
        if reply.get("type") == "error":
            self.writer.error(rid, reply["kind"], reply["message"])
        elif op == "call":
            self.writer.send(Result(id=rid, data=reply["data"]))
        else:
            self.writer.send(Result(id=rid, data=reply))

    async def _pong(self, rid: str | None) -> None:
        """The actor's stats and the cluster's nodes; no pong if the actor does not answer
        (the server's heartbeat then restarts the replica)."""
        stats = await self._get(self.actor.stats.remote())
        self.writer.send(Pong(id=rid, details=self.details(stats)))

    # ---- reports -------------------------------------------------------------------------------

    def details(self, stats: dict[str, Any]) -> dict[str, Any]:
        """What the server shows of this replica: its actor, its node, and Ray's view."""
        return {
            "node": self.where.get("node_id"),
            "node_ip": self.where.get("node_ip"),
            "actor_id": self.where.get("actor_id"),
            "actor_pid": self.where.get("pid"),
            "actor_name": self.launch.actor.get("name"),
            **stats,
            "nodes": self.view,
            "nodes_at": self.view_at,
        }

    def nodes(self) -> list[dict[str, Any]]:
        """Ray's view of the live nodes: their labels and total and free resources (blocks;
        raises when the GCS does not answer)."""
        listed = self.ray.nodes()
        try:
            free = self.ray._private.state.available_resources_per_node()
        except Exception:  # Ray Client has no per-node view; the room check then has none
            return []
        return [
            {
                "node_id": node["NodeID"],
                "labels": node.get("Labels") or {},
                "total": node.get("Resources") or {},
                "available": free.get(node["NodeID"], {}),
            }
            for node in listed
            if node.get("Alive")
        ]

    async def _get(self, ref: Any) -> Any:
        """The value of one object ref, awaited without blocking the loop."""
        if self.client:  # Ray Client's refs are not awaitable: its futures are
            return await asyncio.wrap_future(ref.future())
        return await ref

    def _say(self, message: str) -> None:
        print(f"ray bridge: {message}", file=sys.stderr, flush=True)


def _first_line(exc: BaseException | None) -> str:
    return (str(exc) or type(exc).__name__).strip().splitlines()[0] if exc else "unknown"


async def run(launch: RayLaunch, writer: ReplyWriter, stdin: IO[bytes]) -> int:
    bridge = Bridge(launch, writer)
    try:
        info = await bridge.start()
    except BridgeError as exc:
        writer.error(None, "load_failed", str(exc))
        return 1
    stats = await bridge._get(bridge.actor.stats.remote())
    with contextlib.suppress(Exception):  # the view comes with the pongs otherwise
        bridge.view, bridge.view_at = await asyncio.to_thread(bridge.nodes), time.time()
    writer.send(Ready(info=info, details=bridge.details(stats)))
    return await bridge.serve(stdin)


def main(argv: list[str]) -> int:
    out = claim_stdout()
    die_with_parent()
    writer = ReplyWriter(out)
    launch = RayLaunch.model_validate_json(argv[1])
    # Not asyncio.run: its shutdown joins the executor's threads, and one may be stuck in
    # ray.init on a cluster that never answered.
    code = asyncio.new_event_loop().run_until_complete(run(launch, writer, sys.stdin.buffer))
    with contextlib.suppress(OSError):
        out.flush()
        sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main(sys.argv)
