"""ComfyUI's prompt syntax: `(words)` weighs 1.1x, `(words:1.3)` sets a weight, nesting multiplies,
`\\(` and `\\)` are literal parentheses. Pure string handling; the text encoder applies the weights."""

from __future__ import annotations

_OPEN, _CLOSE = "\x00\x01", "\x00\x02"  # stand-ins for escaped parentheses while parsing


def _split_groups(text: str) -> list[str]:
    """Top-level pieces: plain runs and balanced '(...)' groups (an unclosed group runs to the end)."""
    pieces: list[str] = []
    current, depth = "", 0
    for ch in text:
        if ch == "(":
            if depth == 0 and current:
                pieces.append(current)
                current = ""
            current += ch
            depth += 1
        elif ch == ")" and depth > 0:
            depth -= 1
            current += ch
            if depth == 0:
                pieces.append(current)
                current = ""
        else:
            current += ch
    if current:
        pieces.append(current)
    return pieces


def _weights(text: str, weight: float) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    for piece in _split_groups(text):
        if len(piece) >= 2 and piece[0] == "(" and piece[-1] == ")":
            inner, inner_weight = piece[1:-1], weight * 1.1
            colon = inner.rfind(":")
            if colon > 0:
                try:
                    inner_weight = float(inner[colon + 1:])
                    inner = inner[:colon]
                except ValueError:
                    pass
            out.extend(_weights(inner, inner_weight))
        else:
            out.append((piece, weight))
    return out


def parse_weights(text: str) -> list[tuple[str, float]]:
    """Split a prompt into (text, weight) segments, in order."""
    escaped = text.replace("\\(", _OPEN).replace("\\)", _CLOSE)
    return [
        (segment.replace(_OPEN, "(").replace(_CLOSE, ")"), weight)
        for segment, weight in _weights(escaped, 1.0)
    ]


def chunk_words(
    words: list[tuple[list[int], float]], chunk_len: int = 75, max_word_len: int = 8
) -> list[list[tuple[int, float]]]:
    """Pack per-word token lists into chunks of `chunk_len` tokens, as ComfyUI does: a short word that
    does not fit moves whole to the next chunk; a long one is split across chunks."""
    chunks: list[list[tuple[int, float]]] = [[]]
    for tokens, weight in words:
        remaining = list(tokens)
        while remaining:
            room = chunk_len - len(chunks[-1])
            if len(remaining) <= room:
                chunks[-1].extend((t, weight) for t in remaining)
                break
            if len(remaining) > max_word_len:
                chunks[-1].extend((t, weight) for t in remaining[:room])
                remaining = remaining[room:]
            chunks.append([])
    return chunks
