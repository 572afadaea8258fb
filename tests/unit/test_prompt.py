"""ComfyUI prompt-weight syntax and 75-token chunking."""

from __future__ import annotations

import pytest

from worker.models.prompt import chunk_words, parse_weights


def test_plain_text_has_weight_one() -> None:
    assert parse_weights("a cat on a mat") == [("a cat on a mat", 1.0)]


def test_explicit_weight() -> None:
    assert parse_weights("a (red:1.5) cube") == [("a ", 1.0), ("red", 1.5), (" cube", 1.0)]


def test_parentheses_without_weight_multiply_by_1_1_and_nest() -> None:
    pieces = parse_weights("((glow)) x")
    assert pieces[0][0] == "glow"
    assert pieces[0][1] == pytest.approx(1.21)
    assert pieces[1] == (" x", 1.0)


def test_nested_explicit_weight_replaces_outer() -> None:
    pieces = parse_weights("(a (b:0.5) c:1.2)")
    assert pieces == [("a ", 1.2), ("b", 0.5), (" c", 1.2)]


def test_escaped_parentheses_are_literal() -> None:
    assert parse_weights(r"smile \(happy\)") == [("smile (happy)", 1.0)]


def test_colon_without_number_is_text() -> None:
    pieces = parse_weights("(time: noon)")
    assert pieces[0][0] == "time: noon"
    assert pieces[0][1] == pytest.approx(1.1)


def test_unbalanced_parenthesis_does_not_crash() -> None:
    pieces = parse_weights("a (b")
    assert "".join(p for p, _ in pieces).replace("(", "") == "a b"


def test_chunks_hold_75_tokens_and_move_short_words_whole() -> None:
    words = [([i, i + 1000], 1.0) for i in range(37)]  # 74 tokens
    words.append(([7, 8, 9], 2.0))  # a short word that does not fit in the 1 slot left
    chunks = chunk_words(words)
    assert [len(c) for c in chunks] == [74, 3]
    assert chunks[1] == [(7, 2.0), (8, 2.0), (9, 2.0)]


def test_long_words_are_split_across_chunks() -> None:
    words = [([1] * 70, 1.0), (list(range(20)), 1.0)]  # 20 > 8 tokens: split, not moved
    chunks = chunk_words(words)
    assert [len(c) for c in chunks] == [75, 15]


def test_empty_prompt_is_one_empty_chunk() -> None:
    assert chunk_words([]) == [[]]
