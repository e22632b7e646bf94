"""An anyio TCP server whose connections a ConnManager keeps between two water marks.

Run it with `python examples/anyio_server.py` (asyncio) or `python examples/anyio_server.py
--trio`; it exits 0 in a few seconds, or 1 if what it sees is not what the manager promises.

200 clients connect on 127.0.0.1 and introduce themselves with one line, "<peer id> <role>".
The server protects the relays, tags the DHT peers it values, and serves everyone under
`managed_stream`, which counts each connection for exactly the life of its handler. 180
clients connect first (high water: nothing to do); once they are past their grace period,
20 more arrive, the count goes over high water and the manager trims the eligible
connections back to low water. Clients that read close their side when they see the EOF;
the "stuck" clients never read what the server streams to them, so their graceful close
cannot finish and they are aborted after `close_timeout`. The example prints what was
closed and why, and checks the result against the server's own count and the clients' view.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Callable
from typing import cast

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteStream

from asyncconnmgr import ConnManager, PeerStatus, TrimResult, Victim
from asyncconnmgr.streams import managed_stream

LOW_WATER, HIGH_WATER = 40, 180
GRACE_PERIOD = 1.0
CLOSE_TIMEOUT = 0.5
UPDATE = b"u" * 65_536
OUTCOME_WORDS = {
    "closed": "closed gracefully (EOF, then the peer closed)",
    "aborted": f"aborted after close_timeout ({CLOSE_TIMEOUT} s)",
}

#: The first wave, oldest first: 5 relays, 20 DHT peers, 145 plain peers, 10 stuck ones.
WAVE_1 = (
    [(f"relay-{i}", "relay") for i in range(5)]
    + [(f"dht-{i:02}", "dht") for i in range(20)]
    + [(f"plain-{i:03}", "plain") for i in range(145)]
    + [(f"stuck-{i}", "stuck") for i in range(10)]
)
#: The second wave: newcomers, still in their grace period when the trim comes.
WAVE_2 = [(f"new-{i:02}", "plain") for i in range(20)]


class EchoServer:
    """Serves every client under `managed_stream`; `live` is the server's own count."""

    def __init__(self, manager: ConnManager) -> None:
        self.manager = manager
        self.live: set[str] = set()
        self.trimmed: set[str] = set()  # peers whose handler the manager stopped

    async def handle(self, stream: anyio.abc.SocketStream) -> None:
        buffered = BufferedByteStream(stream)
        try:
            with anyio.fail_after(5):
                hello = await buffered.receive_until(b"\n", 128)
            peer, role = hello.decode().split()
        except (TimeoutError, ValueError, anyio.IncompleteRead, anyio.BrokenResourceError):
            return  # anyio's listener closes the stream
        # What the host knows from the handshake: who matters to it.
        if role == "relay":
            self.manager.protect(peer, "relay")
        elif role == "dht":
            self.manager.tag_peer(peer, "dht", 10)
        try:
            async with managed_stream(self.manager, buffered, peer=peer) as conn:
                self.live.add(peer)
                if role == "stuck":
                    while True:  # a feed of updates this client never reads
                        await buffered.send(UPDATE)
                while True:
                    data = await buffered.receive()
                    with conn.open_stream():  # one request in progress
                        await buffered.send(data)
            if conn.close_requested:
                self.trimmed.add(peer)
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            pass  # the client went away: the connection is closed and reported all the same
        finally:
            self.live.discard(peer)


class Client:
    """A client that reads until EOF and then closes (unless it is a stuck one)."""

    def __init__(self, peer: str, role: str) -> None:
        self.peer = peer
        self.role = role
        self.end: str | None = None  # "eof" or "reset"
        self.received = 0
        self.got_data = anyio.Event()
        self.stream: anyio.abc.SocketStream | None = None

    async def connect(self, port: int) -> None:
        self.stream = await anyio.connect_tcp("127.0.0.1", port)
        await self.stream.send(f"{self.peer} {self.role}\n".encode())

    async def read_until_end(self) -> None:
        assert self.stream is not None
        try:
            while True:
                self.received += len(await self.stream.receive(1 << 20))
                self.got_data.set()
        except anyio.EndOfStream:
            self.end = "eof"
        except anyio.BrokenResourceError:
            self.end = "reset"
        await self.stream.aclose()

    async def ping(self) -> bool:
        """Whether the server still echoes: the connection is alive end to end."""
        assert self.stream is not None
        expected = self.received + 4
        await self.stream.send(b"ping")
        with anyio.move_on_after(5):
            while self.received < expected:
                self.got_data = anyio.Event()
                await self.got_data.wait()
        return self.received >= expected


def why(victim: Victim) -> str:
    """The default policy's reason, in words: (value, busy, outbound, streams, -age, seq)."""
    value, busy, outbound, *_ = cast("tuple[int, bool, bool, int, float, int]", victim.reason)
    return f"value {value}, {'busy' if busy else 'idle'}, {'outbound' if outbound else 'inbound'}"


def report(result: TrimResult) -> None:
    print(
        f"trim ({result.trigger}): {result.target} connection(s) over low water, "
        f"{result.closed} closed in {result.duration or 0:.2f} s, outcomes {dict(result.outcomes)}"
    )
    for (outcome, reason), n in sorted(
        Counter((v.outcome, why(v)) for v in result.victims).items()
    ):
        print(f"    {n:>3} peer(s) {OUTCOME_WORDS[outcome]:<44} chosen as: {reason}")
    youngest = ", ".join(str(v.peer) for v in result.victims[:3])
    print(f"    youngest first: {youngest}, ...")


def kept_because(status: PeerStatus) -> str:
    if status.state == "protected":
        return f"protected ({', '.join(status.protected_by)})"
    if status.state == "in_grace":
        return "in its grace period"
    return f"value {status.value}, within low water ({LOW_WATER} eligible kept, oldest first)"


async def wait_for(condition: Callable[[], bool], what: str) -> None:
    try:
        with anyio.fail_after(10):
            while not condition():  # noqa: ASYNC110 - an example: polling keeps it short
                await anyio.sleep(0.01)
    except TimeoutError:
        raise SystemExit(f"FAILED: timed out waiting for {what}") from None


async def main() -> int:
    async with (
        ConnManager(
            low_water=LOW_WATER,
            high_water=HIGH_WATER,
            grace_period=GRACE_PERIOD,
            silence_period=1.0,
            close_timeout=CLOSE_TIMEOUT,
        ) as manager,
        anyio.create_task_group() as tg,
    ):
        server = EchoServer(manager)
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        tg.start_soon(listener.serve, server.handle)
        results: list[TrimResult] = []
        remove = manager.add_trim_listener(results.append)

        clients = {peer: Client(peer, role) for peer, role in WAVE_1 + WAVE_2}
        for peer, _ in WAVE_1:
            await clients[peer].connect(port)
        await wait_for(lambda: len(server.live) == len(WAVE_1), "the first wave")
        for client in clients.values():
            if client.stream is not None and client.role != "stuck":
                tg.start_soon(client.read_until_end)
        await manager.flush()
        print(f"{manager.get_info().conn_count} connected (high water {HIGH_WATER}): no trim")

        await anyio.sleep(GRACE_PERIOD + 0.2)  # the first wave leaves its grace period
        for peer, _ in WAVE_2:
            await clients[peer].connect(port)
            tg.start_soon(clients[peer].read_until_end)
        await wait_for(lambda: bool(results), "the trim")
        (result,) = results
        report(result)

        # The stuck clients finally read: what is left, then the reset.
        stuck = [c for c in clients.values() if c.role == "stuck"]
        async with anyio.create_task_group() as stuck_readers:
            for client in stuck:
                stuck_readers.start_soon(client.read_until_end)
        victims = {str(v.peer) for v in result.victims}
        await wait_for(lambda: not victims & server.live, "the victims' handlers to end")
        await manager.flush()
        info = manager.get_info()
        survivors = sorted(server.live)
        print(f"after the trim: {info.conn_count} counted by the manager, {len(survivors)} served")
        kept = Counter(kept_because(manager.explain(peer)) for peer in survivors)
        for reason, n in sorted(kept.items()):
            print(f"    {n:>3} peer(s) kept: {reason}")

        failures = []
        expected_survivors = (
            {p for p, r in WAVE_1 if r in ("relay", "dht")}
            | {p for p, _ in WAVE_2}
            | {p for p, _ in WAVE_1[25:45]}  # the 20 oldest plain peers fill low water
        )
        if set(survivors) != expected_survivors:
            failures.append(f"survivors differ: {set(survivors) ^ expected_survivors}")
        if not info.conn_count == len(survivors) == LOW_WATER + 5 + len(WAVE_2):
            failures.append(f"counts disagree: manager {info.conn_count}, server {len(survivors)}")
        if dict(result.outcomes) != {"closed": 125, "aborted": 10}:
            failures.append(f"unexpected outcomes {dict(result.outcomes)}")
        if any(clients[p].end != "eof" for p in victims if not p.startswith("stuck")):
            failures.append("a trimmed client did not see EOF")
        if any(client.end != "reset" for client in stuck):
            failures.append("a stuck client was not reset")
        if victims != server.trimmed:
            failures.append("the handlers stopped by the trim are not its victims")
        for peer in survivors:
            if not await clients[peer].ping():
                failures.append(f"{peer} does not answer")

        remove()
        for client in clients.values():
            if client.stream is not None and client.end is None:
                await client.stream.send_eof()  # a polite goodbye: the server's handler ends
        await wait_for(
            lambda: not server.live and all(c.end for c in clients.values()), "every handler to end"
        )
        tg.cancel_scope.cancel()  # stops the listener's serve()
    await listener.aclose()

    for failure in failures:
        print(f"FAILED: {failure}")
    if not failures:
        print("ok: protected and tagged peers kept, counts agree, stuck peers aborted")
    return 1 if failures else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trio", action="store_true", help="run on trio instead of asyncio")
    args = parser.parse_args()
    sys.exit(anyio.run(main, backend="trio" if args.trio else "asyncio"))
