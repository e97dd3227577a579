"""The in-process failure windows of ``taskq.lockout`` (Redis runs the same rules in Lua)."""

from __future__ import annotations

import pytest

from taskq.lockout import Locked, LoginFailures, account_key, name_key


def test_every_window_must_have_room_and_a_released_slot_is_free_again():
    failures = LoginFailures(None, [(2, 60.0), (3, 3600.0)])
    first = failures.reserve("k")
    failures.reserve("k")
    with pytest.raises(Locked) as locked:
        failures.reserve("k")
    assert 59 < locked.value.retry_after <= 60  # the oldest failure leaves the minute window
    failures.release(first)  # it was a right password after all
    failures.reserve("k")
    assert failures.reserve("other")  # another account has its own budget


def test_keys_name_one_account_however_it_was_named():
    assert account_key(7) == "taskq:login-failures:account:7"
    assert name_key("  Ann@Example.com ") == name_key("ann@example.com")
