from __future__ import annotations

import pytest

from mmserve.backends.text import StopMatcher


def run(stops: list[str], pieces: list[str]) -> tuple[str, bool]:
    matcher = StopMatcher(stops)
    out = []
    for piece in pieces:
        text, stopped = matcher.feed(piece)
        out.append(text)
        if stopped:
            return "".join(out), True
    return "".join(out) + matcher.flush(), False


@pytest.mark.parametrize(
    ("stops", "pieces", "expected"),
    [
        ([], ["Hello", " world"], ("Hello world", False)),
        (["\n"], ["Hello", "\nmore"], ("Hello", True)),
        (["<|im_end|>"], ["Hi", "<|", "im", "_end", "|>", "after"], ("Hi", True)),
        (["<|im_end|>"], ["a <", "b"], ("a <b", False)),
        (["STOP"], ["xxST", "OPyy"], ("xx", True)),
        (["ab", "b"], ["xab"], ("x", True)),
        (["END"], ["the E", "N"], ("the EN", False)),  # held back, released by flush
    ],
)
def test_stop_strings(stops: list[str], pieces: list[str], expected: tuple[str, bool]) -> None:
    assert run(stops, pieces) == expected


def test_nothing_that_could_start_a_stop_string_leaks_early() -> None:
    matcher = StopMatcher(["</s>"])
    assert matcher.feed("ok </") == ("ok ", False)
    assert matcher.feed("s>") == ("", True)
