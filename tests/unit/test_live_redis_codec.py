"""The Redis backend's own command packer, which the router's sample flush uses instead of redis-py's."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from redis.connection import Connection

from modelroll.live.redis_backend import resp_command


@given(st.lists(st.binary(max_size=300), max_size=40))
def test_resp_command_is_byte_for_byte_what_redis_py_sends(args: list[bytes]) -> None:
    command = [b"EVALSHA", *args]  # redis-py splits a first argument on spaces (command names): a real one here
    assert resp_command(command) == b"".join(Connection().pack_command(*command))
