"""ChangelogState without a broker that answers: a transaction whose producer cannot start (a
broker that cannot host a transaction coordinator never answers) is given up, not waited for."""

import asyncio
import time

from streams.agents.keyed_state import ChangelogState, NoTransaction


def test_a_transaction_nobody_answers_is_given_up_within_its_time():
    async def run() -> None:
        accepted = []

        async def silent(reader, writer):  # takes the connection, reads, never answers
            accepted.append(writer)
            await reader.read()

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            state = ChangelogState(f"127.0.0.1:{port}", "t", lambda key: 0)
            state.prepare_s = 1.0
            started = time.monotonic()
            try:
                await asyncio.wait_for(state.put_atomic({"b/0/r": b"round"}), 30)
            except NoTransaction as exc:
                assert "no transaction coordinator answered in 1 s" in str(exc)
                assert "transactional id t.*" in str(exc)
            else:
                raise AssertionError("a transaction nobody answered was taken")
            assert time.monotonic() - started < 15
            assert accepted, "the producer never reached the silent peer"
            assert state._transactional is None  # the next transaction starts a new producer
        finally:
            for writer in accepted:
                writer.close()
            server.close()

    asyncio.run(run())
