"""Reading the Markdown that pages send (CommonMark's code spans and backslash escapes), for tests of literal text."""

from __future__ import annotations

import re

_PUNCT = set(r"""!"#$%&'()*+,-./:;<=>?@[\]^_`{|}~""")


def split_code(md: str) -> tuple[str, list[str]]:
    """(the Markdown outside inline code spans, with its backslash escapes kept; the code spans' contents).

    CommonMark: a run of n backticks opens a span closed by the next run of exactly n; an unmatched run is literal;
    a backslash before punctuation escapes it (an escaped backtick opens nothing); one space is stripped from
    both ends of a span's content when both are spaces and it is not all spaces. Invisible word joiners are dropped.
    """
    md = md.replace("\u2060", "")
    outside, code, i = [], [], 0
    while i < len(md):
        if md[i] == "\\" and i + 1 < len(md) and md[i + 1] in _PUNCT:
            outside.append(md[i:i + 2])
            i += 2
            continue
        if md[i] == "`":
            n = len(re.match(r"`+", md[i:]).group(0))
            close = re.compile(r"(?<!`)`{" + str(n) + r"}(?!`)").search(md, i + n)
            if close is None:
                outside.append(md[i:i + n])
                i += n
                continue
            content = md[i + n:close.start()].replace("\n", " ")
            if len(content) > 1 and content[0] == content[-1] == " " and content.strip(" "):
                content = content[1:-1]
            code.append(content)
            outside.append("\x00")  # where a span was
            i = close.end()
            continue
        outside.append(md[i])
        i += 1
    return "".join(outside), code


def plain_text(md: str) -> str:
    """What a reader sees of simple Markdown: code spans as their content, escapes resolved."""
    outside, code = split_code(md)
    text = re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", outside)
    spans = iter(code)
    return re.sub("\x00", lambda _: next(spans), text)


__all__ = ["plain_text", "split_code"]
