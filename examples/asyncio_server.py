"""An asyncio TCP server whose connections a ConnManager keeps between two water marks.

Run it with `python examples/asyncio_server.py`; it exits 0 in a few seconds, or 1 if what
it sees is not what the manager promises.

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

import asyncio
import sys
from collections import Counter
from collections.abc import Callable
from typing import cast

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

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            hello = await asyncio.wait_for(reader.readline(), timeout=5)
            peer, role = hello.decode().split()
        except (asyncio.TimeoutError, ValueError, OSError):
            writer.close()
            return
        # What the host knows from the handshake: who matters to it.
        if role == "relay":
            self.manager.protect(peer, "relay")
        elif role == "dht":
            self.manager.tag_peer(peer, "dht", 10)
        try:
            async with managed_stream(self.manager, (reader, writer), peer=peer) as conn:
                self.live.add(peer)
                if role == "stuck":
                    while True:  # a feed of updates this client never reads
                        writer.write(UPDATE)
                        await writer.drain()
                while data := await reader.read(4096):
                    with conn.open_stream():  # one request in progress
                        writer.write(data)
                        await writer.drain()
            if conn.close_requested:
                self.trimmed.add(peer)
        except OSError:
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
        self.got_data = asyncio.Event()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self, port: int) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        self.writer.write(f"{self.peer} {self.role}\n".encode())
        await self.writer.drain()

    async def read_until_end(self) -> None:
        assert self.reader is not None
        assert self.writer is not None
        try:
            while data := await self.reader.read(1 << 20):
                self.received += len(data)
                self.got_data.set()
            self.end = "eof"
        except ConnectionError:  # reset (or a broken pipe: reset after our EOF)
            self.end = "reset"
        self.writer.close()

    async def ping(self) -> bool:
        """Whether the server still echoes: the connection is alive end to end."""
        assert self.writer is not None
        expected = self.received + 4
        self.writer.write(b"ping")
        await self.writer.drain()

        async def echoed() -> None:
            while self.received < expected:
                self.got_data.clear()
                await self.got_data.wait()

        try:
            await asyncio.wait_for(echoed(), timeout=5)
        except asyncio.TimeoutError:
            return False
        return True


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


async def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise SystemExit(f"FAILED: timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def main() -> int:
    async with ConnManager(
        low_water=LOW_WATER,
        high_water=HIGH_WATER,
        grace_period=GRACE_PERIOD,
        silence_period=1.0,
        close_timeout=CLOSE_TIMEOUT,
    ) as manager:
        server = EchoServer(manager)
        listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        results: list[TrimResult] = []
        remove = manager.add_trim_listener(results.append)

        clients = {peer: Client(peer, role) for peer, role in WAVE_1 + WAVE_2}
        readers = []
        for peer, _ in WAVE_1:
            await clients[peer].connect(port)
        await wait_for(lambda: len(server.live) == len(WAVE_1), "the first wave")
        for client in clients.values():
            if client.writer is not None and client.role != "stuck":
                readers.append(asyncio.create_task(client.read_until_end()))
        await manager.flush()
        print(f"{manager.get_info().conn_count} connected (high water {HIGH_WATER}): no trim")

        await asyncio.sleep(GRACE_PERIOD + 0.2)  # the first wave leaves its grace period
        for peer, _ in WAVE_2:
            await clients[peer].connect(port)
            readers.append(asyncio.create_task(clients[peer].read_until_end()))
        await wait_for(lambda: bool(results), "the trim")
        (result,) = results
        report(result)

        # The stuck clients finally read: what is left, then the reset.
        stuck = [c for c in clients.values() if c.role == "stuck"]
        await asyncio.gather(*(client.read_until_end() for client in stuck))
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
            if client.writer is not None and client.end is None:
                client.writer.close()
        await asyncio.gather(*readers)
        await wait_for(lambda: not server.live, "every handler to end")
        listener.close()
        await listener.wait_closed()

    for failure in failures:
        print(f"FAILED: {failure}")
    if not failures:
        print("ok: protected and tagged peers kept, counts agree, stuck peers aborted")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
