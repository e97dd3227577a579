"""The rate notation and the create's warnings (no database)."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskq.queues import RATE_SYNTAX, Rate, parse_rate, service_warnings


@pytest.mark.parametrize(
    ("text", "limit", "seconds"),
    [("100/60s", 100, 60), ("10/s", 10, 1), ("5/2m", 5, 120), ("1000/h", 1000, 3600),
     ("7/d", 7, 86400), ("100/60", 100, 60), ("3/.5s", 3, 0.5), ("2/250ms", 2, 0.25)],
)  # fmt: skip
def test_rates_parse(text, limit, seconds):
    assert parse_rate(text) == Rate(limit, timedelta(seconds=seconds))


@pytest.mark.parametrize(
    "text", ["", "100", "100/", "0/1s", "10/0s", "10/0.000s", "1000000/s", " 1/s", "1/s\n",
             "1/5 s", "-1/s", "1/x", "1/1.2345s", "\u0661/s"],
)  # fmt: skip
def test_bad_rates_are_refused_with_a_message(text):
    with pytest.raises(ValueError, match="N/PERIOD"):
        parse_rate(text)


@given(st.text(alphabet="0123456789./smhd", max_size=12))
def test_the_documented_pattern_and_the_parser_agree(text):
    # /openapi.json documents RATE_SYNTAX as an ECMA pattern: what matches is accepted.
    documented = re.fullmatch(RATE_SYNTAX, text) is not None
    try:
        rate = parse_rate(text)
    except ValueError:
        assert not documented
        return
    assert documented and rate.limit >= 1 and rate.period > timedelta(0)


def test_rates_print_as_they_are_written():
    assert str(parse_rate("100/60s")) == "100/60s" and str(parse_rate("5/m")) == "5/60s"


def test_warnings_name_unserved_and_paused_queues_once_each():
    warnings = service_warnings(["mail", "mail", "web", "pdf"], {"web", "pdf"}, {"pdf", "x"})
    assert warnings == [
        "No live worker serves queue 'mail': the task waits for one.",
        "Queue 'pdf' is paused: the task waits until it is resumed.",
    ]
    assert service_warnings(["web"], {"web"}, set()) == []
