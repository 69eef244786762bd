"""config.yaml for the Python host: a YAML 1.2 parser for the subset Meridian accepts, standard library only.

The subset is YAML 1.2 (core schema) without anchors, aliases, tags, directives, explicit (``?``) keys,
collection keys or several documents. The control plane refuses those at push (``src/core/model-config.ts``
checks the same list with the ``yaml`` package), and ``python-host.yaml.test.ts`` checks that this parser
and that package read every generated document alike, so a package the control plane accepts reads the
same here.
"""

from __future__ import annotations

import bisect
import json
import math
import re
from typing import Any, List, Optional, Tuple

__all__ = ["YamlError", "js_json", "js_string", "parse", "resolve_plain"]


class YamlError(ValueError):
    """A document outside the subset, or not YAML at all; ``line`` is 1-based."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.reason = message


# YAML 1.2 core schema (YAML 1.2.2 §10.3.2), the schema the `yaml` package resolves plain scalars with.
_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")
_TRUE = re.compile(r"^(?:true|True|TRUE)$")
_FALSE = re.compile(r"^(?:false|False|FALSE)$")
_INT = re.compile(r"^[-+]?[0-9]+$")
_OCT = re.compile(r"^0o[0-7]+$")
_HEX = re.compile(r"^0x[0-9a-fA-F]+$")
_FLOAT = re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$")
_INF = re.compile(r"^[-+]?\.(?:inf|Inf|INF)$")
_NAN = re.compile(r"^\.(?:nan|NaN|NAN)$")

_FLOW_INDICATORS = ",[]{}"
_WHITE = " \t"
_ESCAPES = {
    "0": "\x00",
    "a": "\x07",
    "b": "\x08",
    "t": "\t",
    "\t": "\t",
    "n": "\n",
    "v": "\x0b",
    "f": "\x0c",
    "r": "\r",
    "e": "\x1b",
    " ": " ",
    '"': '"',
    "/": "/",
    "\\": "\\",
    "N": "\x85",
    "_": "\xa0",
    "L": "\u2028",
    "P": "\u2029",
}
_HEX_ESCAPES = {"x": 2, "u": 4, "U": 8}


def resolve_plain(text: str) -> Any:
    """The value of a plain scalar under the core schema."""
    if _NULL.match(text):
        return None
    if _TRUE.match(text):
        return True
    if _FALSE.match(text):
        return False
    if _INT.match(text):
        return int(text, 10)
    if _OCT.match(text):
        return int(text[2:], 8)
    if _HEX.match(text):
        return int(text[2:], 16)
    if _FLOAT.match(text):
        return float(text)
    if _INF.match(text):
        return -math.inf if text.startswith("-") else math.inf
    if _NAN.match(text):
        return math.nan
    return text


def parse(text: str) -> Any:
    """Parses one document of the subset; raises YamlError naming the line at fault."""
    return _Parser(text).document()


class _Parser:
    def __init__(self, text: str) -> None:
        if text.startswith("\ufeff"):
            text = text[1:]
        self.s = text.replace("\r\n", "\n").replace("\r", "\n")
        self.n = len(self.s)
        self.i = 0
        self.line_starts = [0] + [m.end() for m in re.finditer("\n", self.s)]

    # -- positions ---------------------------------------------------------------------------------------

    def line_no(self, i: Optional[int] = None) -> int:
        return bisect.bisect_right(self.line_starts, self.i if i is None else i)

    def col(self, i: Optional[int] = None) -> int:
        i = self.i if i is None else i
        return i - self.line_starts[self.line_no(i) - 1]

    def fail(self, message: str, i: Optional[int] = None) -> YamlError:
        return YamlError(self.line_no(i), message)

    def peek(self, k: int = 0) -> str:
        j = self.i + k
        return self.s[j] if j < self.n else ""

    def at_break(self, j: int) -> bool:
        """End of line or of input at j."""
        return j >= self.n or self.s[j] == "\n"

    def at_blank(self, j: int) -> bool:
        """Whitespace, end of line or end of input at j."""
        return j >= self.n or self.s[j] in " \t\n"

    def line_end(self, j: int) -> int:
        k = self.s.find("\n", j)
        return self.n if k == -1 else k

    # -- lines -------------------------------------------------------------------------------------------

    def is_marker(self, j: int) -> bool:
        """A document marker (`---` or `...`) at the start of the line at j."""
        return (self.s.startswith("---", j) or self.s.startswith("...", j)) and self.at_blank(j + 3)

    def skip_blank_lines(self) -> None:
        """From the start of a line, skips lines holding only whitespace or a comment."""
        while self.i < self.n:
            j = self.i
            while j < self.n and self.s[j] in _WHITE:
                j += 1
            if j < self.n and self.s[j] == "#":
                j = self.line_end(j)
            if not self.at_break(j):
                return
            self.i = j + 1 if j < self.n else self.n

    def content_line(self) -> Tuple[int, int]:
        """(indent, start of content) of the line at self.i, which skip_blank_lines left on content.

        The indent is -1 at the end of input or at a document marker, which ends every block.
        """
        if self.i >= self.n or self.is_marker(self.i):
            return -1, self.i
        j = self.i
        while j < self.n and self.s[j] == " ":
            j += 1
        if j < self.n and self.s[j] == "\t":
            raise self.fail("tabs are not allowed in indentation", j)
        return j - self.i, j

    def end_of_line(self, what: str) -> None:
        """After a node on this line only whitespace and a comment may follow; moves to the next line."""
        j = self.i
        while j < self.n and self.s[j] in _WHITE:
            j += 1
        if j < self.n and self.s[j] == "#":
            if j > 0 and self.s[j - 1] not in " \t\n":
                raise self.fail("a comment must be separated from content by whitespace", j)
            j = self.line_end(j)
        if not self.at_break(j):
            raise self.fail(f"unexpected content after {what}", j)
        self.i = j + 1 if j < self.n else self.n

    # -- documents ---------------------------------------------------------------------------------------

    def document(self) -> Any:
        self.skip_blank_lines()
        if self.i < self.n and self.s[self.i] == "%":
            raise self.fail("directives (%YAML, %TAG) are not supported")
        value = None
        if self.s.startswith("---", self.i) and self.at_blank(self.i + 3):
            self.i += 3
            j = self.i
            while j < self.n and self.s[j] in _WHITE:
                j += 1
            if self.at_break(j) or self.s[j] == "#":
                self.end_of_line("the document start marker (---)")
                value = self.block_node(-1)
            else:
                self.i = j
                # `--- value`: a scalar or flow node may share the marker's line, a block collection not.
                value = self.inline_node(-1, after_key=True)
        else:
            value = self.block_node(-1)
        self.skip_blank_lines()
        if self.s.startswith("...", self.i) and self.at_blank(self.i + 3):
            self.i += 3
            self.end_of_line("the document end marker (...)")
            self.skip_blank_lines()
        if self.i < self.n:
            if self.s.startswith("---", self.i):
                raise self.fail("a config file holds one document; found a second (---)")
            raise self.fail("unexpected content")
        return value

    # -- block context -----------------------------------------------------------------------------------

    def block_node(self, parent: int, indentless: bool = False) -> Any:
        """The node on the following lines, more indented than `parent` (or a `- ` sequence at `parent`
        itself when `indentless`, as a mapping value may be); null when there is none."""
        self.skip_blank_lines()
        indent, start = self.content_line()
        if indent > parent:
            self.i = start
            return self.inline_node(parent)
        if indentless and indent == parent and self.is_sequence_entry(start):
            self.i = start
            return self.block_sequence(indent)
        return None

    def is_sequence_entry(self, j: int) -> bool:
        return j < self.n and self.s[j] == "-" and self.at_blank(j + 1)

    def inline_node(self, parent: int, after_key: bool = False) -> Any:
        """The node that starts at self.i (a line's content, or what follows `key:` / `- ` on it)."""
        c = self.peek()
        col = self.col()
        self.check_indicator(c)
        if c == "-" and self.at_blank(self.i + 1):
            if after_key:
                raise self.fail("a block sequence cannot start on the line of its key")
            return self.block_sequence(col)
        if c in "|>":
            return self.block_scalar(parent)
        if c in "[{":
            start = self.i
            value = self.flow_node()
            if self.key_follows():
                raise self.fail("collections as mapping keys are not supported", start)
            self.end_of_line("a flow collection")
            return value
        if c in "\"'":
            start = self.i
            value = self.quoted()
            if self.key_follows():
                if after_key:
                    raise self.fail("mapping values are not allowed here", start)
                self.check_implicit_key(start)
                return self.block_mapping(col, first_key=(js_string(value), start))
            self.end_of_line("a quoted scalar")
            return value
        # A plain scalar: a mapping key when `: ` follows on this line.
        start = self.i
        text, stop = self.plain_on_line(start)
        if stop < self.n and self.s[stop] == ":":
            if after_key:
                raise self.fail("mapping values are not allowed here", stop)
            self.i = stop
            self.check_implicit_key(start)
            return self.block_mapping(col, first_key=(js_string(resolve_plain(text)), start))
        self.i = stop
        return resolve_plain(self.plain_continuation(text, parent))

    def check_indicator(self, c: str) -> None:
        if c == "&":
            raise self.fail("anchors (&name) are not supported")
        if c == "*":
            raise self.fail("aliases (*name) are not supported")
        if c == "!":
            raise self.fail("tags (!tag) are not supported")
        if c == "?" and self.at_blank(self.i + 1):
            raise self.fail("explicit keys (? key) are not supported")
        if c in "@`":
            raise self.fail(f"a plain scalar cannot start with the reserved indicator {c}")
        if c == "%" and self.col() == 0:
            raise self.fail("directives (%YAML, %TAG) are not supported")
        if c in "]},":
            raise self.fail(f"a plain scalar cannot start with {c!r}")

    def check_implicit_key(self, start: int) -> None:
        """An implicit key (self.i at its `:`) is on one line and at most 1024 characters (§7.4.2)."""
        if "\n" in self.s[start : self.i]:
            raise self.fail("implicit keys need to be on a single line", start)
        if self.i - start > 1024:
            raise self.fail("an implicit key is at most 1024 characters long", start)

    def key_follows(self) -> bool:
        """After a quoted or flow node: whitespace then `:` and a blank, which makes it a key."""
        j = self.i
        while j < self.n and self.s[j] in _WHITE:
            j += 1
        if j < self.n and self.s[j] == ":" and self.at_blank(j + 1):
            self.i = j
            return True
        return False

    def plain_on_line(self, start: int) -> Tuple[str, int]:
        """A plain scalar's text on one line (block context): up to `: `, ` #` or the end of the line.
        Returns the text and where it stopped (at the `:` of a key, or after the text)."""
        j = start
        end = self.line_end(start)
        last = start
        while j < end:
            ch = self.s[j]
            if ch == ":" and self.at_blank(j + 1):
                return self.s[start:last], j
            if ch == "#" and j > start and self.s[j - 1] in _WHITE:
                break
            j += 1
            if ch not in _WHITE:
                last = j
        return self.s[start:last], last

    def finish_line(self) -> bool:
        """After a plain scalar's text: skips whitespace and a comment to the next line.
        Returns whether a comment was there (a comment ends a multi-line plain scalar)."""
        j = self.i
        while j < self.n and self.s[j] in _WHITE:
            j += 1
        comment = j < self.n and self.s[j] == "#"
        if comment:
            j = self.line_end(j)
        if not self.at_break(j):
            raise self.fail("unexpected content after a plain scalar", j)
        self.i = j + 1 if j < self.n else self.n
        return comment

    def plain_continuation(self, first: str, parent: int) -> str:
        """Folds the lines of a multi-line plain scalar (YAML 1.2.2 §7.3.3): each more indented than
        `parent`; a single line break becomes a space, each empty line a newline."""
        parts = [first]
        if self.finish_line():
            return first
        empty_lines = 0
        while self.i < self.n:
            line_start = self.i
            k = line_start
            while k < self.n and self.s[k] in _WHITE:
                k += 1
            if self.at_break(k):
                empty_lines += 1
                self.i = k + 1 if k < self.n else self.n
                continue
            indent = 0
            while self.s[line_start + indent] == " ":
                indent += 1
            if indent <= parent or self.s[k] == "#" or self.is_marker(line_start):
                self.i = line_start
                break
            text, stop = self.plain_on_line(k)
            if stop < self.n and self.s[stop] == ":":
                raise self.fail("mapping values are not allowed here", stop)
            parts.append("\n" * empty_lines if empty_lines else " ")
            parts.append(text)
            empty_lines = 0
            self.i = stop
            if self.finish_line():
                break
        return "".join(parts)

    def block_mapping(self, indent: int, first_key: Tuple[str, int]) -> dict:
        out: dict = {}
        name, key_at = first_key
        while True:
            # self.i is at the `:` after the key.
            if name in out:
                raise self.fail(f"duplicate key {name!r}", key_at)
            self.i += 1
            j = self.i
            while j < self.n and self.s[j] in _WHITE:
                j += 1
            if self.at_break(j) or self.s[j] == "#":
                self.i = j
                self.end_of_line("a key")
                out[name] = self.block_node(indent, indentless=True)
            else:
                if self.s[j - 1] not in _WHITE and j == self.i:
                    raise self.fail("a mapping value needs a space after the colon", j)
                self.i = j
                out[name] = self.inline_node(indent, after_key=True)
            self.skip_blank_lines()
            next_indent, start = self.content_line()
            if next_indent < indent:
                return out
            if next_indent > indent:
                raise self.fail("this line is indented more than the keys of its mapping", start)
            self.i = start
            if self.is_sequence_entry(start):
                raise self.fail("a sequence entry where a mapping key was expected", start)
            name, key_at = self.mapping_key(start)

    def mapping_key(self, start: int) -> Tuple[str, int]:
        c = self.peek()
        self.check_indicator(c)
        if c in "|>":
            raise self.fail("a block scalar cannot be a mapping key")
        if c in "\"'":
            value = self.quoted()
            if not self.key_follows():
                raise self.fail("a mapping key must be followed by ': '", start)
            self.check_implicit_key(start)
            return js_string(value), start
        if c in "[{":
            raise self.fail("collections as mapping keys are not supported", start)
        text, stop = self.plain_on_line(start)
        if stop >= self.n or self.s[stop] != ":":
            raise self.fail("expected a mapping key followed by ': '", start)
        self.i = stop
        self.check_implicit_key(start)
        return js_string(resolve_plain(text)), start

    def block_sequence(self, indent: int) -> list:
        out: list = []
        while True:
            # self.i is at the `-` of an entry.
            self.i += 1
            j = self.i
            while j < self.n and self.s[j] in _WHITE:
                j += 1
            if self.at_break(j) or self.s[j] == "#":
                self.i = j
                self.end_of_line("a sequence entry")
                out.append(self.block_node(indent))
            else:
                self.i = j
                out.append(self.inline_node(indent))
            self.skip_blank_lines()
            next_indent, start = self.content_line()
            if next_indent < indent:
                return out
            if next_indent > indent:
                raise self.fail("this line is indented more than the entries of its sequence", start)
            if not self.is_sequence_entry(start):
                # The end of an indentless sequence: its mapping's next key is at the same indent.
                self.i = self.line_starts[self.line_no(start) - 1]
                return out
            self.i = start

    def block_scalar(self, parent: int) -> str:
        """A literal (|) or folded (>) block scalar (YAML 1.2.2 §8.1), its header at self.i."""
        folded = self.s[self.i] == ">"
        self.i += 1
        chomping = None  # None: clip, True: keep, False: strip (§8.1.1.2)
        explicit = None
        for _ in range(2):
            c = self.peek()
            if c in "+-" and chomping is None:
                chomping = c == "+"
                self.i += 1
            elif c in "123456789" and explicit is None:
                explicit = int(c)
                self.i += 1
        self.end_of_line("a block scalar header")
        indent = None if explicit is None else max(parent, 0) + explicit
        lines: List[str] = []
        leading_spaces = 0
        while self.i < self.n:
            line_start = self.i
            end = self.line_end(line_start)
            k = line_start
            while k < end and self.s[k] == " ":
                k += 1
            spaces = k - line_start
            blank = k == end
            if indent is None:
                if blank:
                    # Empty lines before the first text line; their breaks are content.
                    leading_spaces = max(leading_spaces, spaces)
                    lines.append("")
                    self.i = end + 1 if end < self.n else self.n
                    continue
                if spaces <= parent or self.is_marker(line_start):
                    break
                indent = spaces
                if leading_spaces > indent:
                    raise self.fail("an empty line of a block scalar is indented more than its text", k)
            if self.is_marker(line_start) or (not blank and spaces < indent):
                break
            # A line of spaces no longer than the indentation is empty; longer, its extra spaces are text.
            lines.append(self.s[line_start + indent : end] if spaces > indent or not blank else "")
            self.i = end + 1 if end < self.n else self.n
        return _join_block(lines, folded, chomping)

    # -- flow context ------------------------------------------------------------------------------------

    def flow_ws(self) -> None:
        """Whitespace, line breaks and comments inside a flow collection."""
        while self.i < self.n:
            c = self.s[self.i]
            if c in " \t\n":
                self.i += 1
            elif c == "#" and (self.i == 0 or self.s[self.i - 1] in " \t\n"):
                self.i = self.line_end(self.i)
            else:
                return
        raise self.fail("a flow collection is not closed")

    def flow_node(self) -> Any:
        c = self.peek()
        self.check_indicator(c)
        if c == "[":
            return self.flow_sequence()
        if c == "{":
            return self.flow_mapping()
        if c in "\"'":
            return self.quoted()
        if c in "|>":
            raise self.fail("block scalars are not allowed inside a flow collection")
        if c == "-" and (self.at_blank(self.i + 1) or self.peek(1) in _FLOW_INDICATORS):
            raise self.fail("block collections are not allowed inside a flow collection")
        if c in _FLOW_INDICATORS:
            raise self.fail(f"unexpected {c!r} in a flow collection")
        return resolve_plain(self.plain_flow())

    def flow_sequence(self) -> list:
        start = self.i
        self.i += 1
        out: list = []
        while True:
            self.flow_ws()
            if self.peek() == "]":
                self.i += 1
                return out
            item_at = self.i
            item = self.flow_node()
            self.flow_ws()
            if self.peek() == ":":
                # A single-pair mapping inside a sequence: [key: value].
                if isinstance(item, (list, dict)):
                    raise self.fail("collections as mapping keys are not supported", item_at)
                if "\n" in self.s[item_at : self.i]:
                    raise self.fail("implicit keys of flow sequence pairs need to be on a single line", item_at)
                self.i += 1
                self.flow_ws()
                value = None if self.peek() in ",]" else self.flow_node()
                item = {js_string(item): value}
                self.flow_ws()
            out.append(item)
            c = self.peek()
            if c == ",":
                self.i += 1
            elif c == "]":
                self.i += 1
                return out
            else:
                raise self.fail("expected ',' or ']' in a flow sequence", self.i if c else start)

    def flow_mapping(self) -> dict:
        start = self.i
        self.i += 1
        out: dict = {}
        while True:
            self.flow_ws()
            if self.peek() == "}":
                self.i += 1
                return out
            key_at = self.i
            if self.peek() in "[{":
                raise self.fail("collections as mapping keys are not supported")
            key = self.flow_node()
            name = js_string(key)
            if name in out:
                raise self.fail(f"duplicate key {name!r}", key_at)
            self.flow_ws()
            value = None
            if self.peek() == ":":
                self.i += 1
                self.flow_ws()
                if self.peek() not in ",}":
                    value = self.flow_node()
                    self.flow_ws()
            out[name] = value
            c = self.peek()
            if c == ",":
                self.i += 1
            elif c == "}":
                self.i += 1
                return out
            else:
                raise self.fail("expected ',' or '}' in a flow mapping", self.i if c else start)

    def plain_flow(self) -> str:
        """A plain scalar inside a flow collection; lines fold to spaces."""
        start = self.i
        parts: List[str] = []
        line: List[str] = []
        while self.i < self.n:
            c = self.s[self.i]
            if c in _FLOW_INDICATORS:
                break
            if c == ":" and (self.at_blank(self.i + 1) or self.peek(1) in _FLOW_INDICATORS):
                break
            if c == "#" and self.i > start and self.s[self.i - 1] in " \t\n":
                break
            if c == "\n":
                parts.append("".join(line).rstrip(_WHITE))
                line = []
                self.i += 1
                while self.i < self.n and self.s[self.i] in _WHITE:
                    self.i += 1
                continue
            line.append(c)
            self.i += 1
        parts.append("".join(line).rstrip(_WHITE))
        # The scalar ends at its last text; breaks before a closing indicator are not content.
        while len(parts) > 1 and parts[-1] == "":
            parts.pop()
        return _fold_lines(parts).strip(_WHITE)

    # -- quoted scalars ----------------------------------------------------------------------------------

    def quoted(self) -> str:
        """A single- or double-quoted scalar (YAML 1.2.2 §7.3.1, §7.3.2), possibly over several lines.

        Line folding follows the `yaml` package's reading, which the control plane uses: a line break is a
        space, or one newline per empty line after it; an escaped line break (double quotes) is nothing,
        and the lines after it fold as if it were not there."""
        quote = self.s[self.i]
        start = self.i
        j = start + 1
        while True:
            if j >= self.n:
                raise self.fail("a quoted scalar is not closed", start)
            c = self.s[j]
            if quote == '"' and c == "\\":
                j += 2
                continue
            if c == quote:
                if quote == "'" and j + 1 < self.n and self.s[j + 1] == "'":
                    j += 2
                    continue
                break
            if c == "\n" and self.is_marker(j + 1):
                raise self.fail("a quoted scalar is not closed", start)
            j += 1
        body = self.s[start + 1 : j]
        self.i = j + 1
        if quote == "'":
            return _unfold(body).replace("''", "'")
        return self.double_quoted(body, start)

    def double_quoted(self, body: str, start: int) -> str:
        out: List[str] = []
        end = len(body)
        i = 0
        while i < end:
            ch = body[i]
            if ch == "\n":
                fold = ""
                while i + 1 < end and body[i + 1] in " \t\n":
                    if body[i + 1] == "\n":
                        fold += "\n"
                    i += 1
                out.append(fold or " ")
            elif ch == "\\":
                i += 1
                nxt = body[i] if i < end else ""
                if nxt in _ESCAPES:
                    out.append(_ESCAPES[nxt])
                elif nxt == "\n":
                    # An escaped line break: skipped, with the next line's leading white space.
                    while i + 1 < end and body[i + 1] in _WHITE:
                        i += 1
                elif nxt in _HEX_ESCAPES:
                    width = _HEX_ESCAPES[nxt]
                    digits = body[i + 1 : i + 1 + width]
                    if len(digits) != width or not all(d in "0123456789abcdefABCDEF" for d in digits):
                        raise self.fail(f"a \\{nxt} escape needs {width} hexadecimal digits", start)
                    out.append(chr(int(digits, 16)))
                    i += width
                else:
                    raise self.fail(f"unknown escape \\{nxt}", start)
            elif ch in _WHITE:
                # White space that ends a line is not content.
                first = i
                while i + 1 < end and body[i + 1] in _WHITE:
                    i += 1
                if i + 1 >= end or body[i + 1] != "\n":
                    out.append(body[first : i + 1])
            else:
                out.append(ch)
            i += 1
        return "".join(out)


def js_string(value: Any) -> str:
    """A scalar as JavaScript's String() writes it: how the `yaml` package's toJS() turns keys into text,
    and how the JavaScript side turns environment variable values into strings."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value == int(value) and abs(value) < 1e21:
        return str(int(value))
    return repr(value)


def js_json(value: Any) -> str:
    """A scalar as JSON.stringify() writes it, for messages that quote a value as the TypeScript side does."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return "null"
    return js_string(value)


def _unfold(text: str) -> str:
    """A flow scalar's lines folded (YAML 1.2.2 §6.5, as the `yaml` package does it): each line trimmed,
    a line break a space, each empty line after it a newline."""
    lines = text.split("\n")
    if len(lines) == 1:
        return text
    out = lines[0].rstrip(_WHITE)
    sep = " "
    for line in lines[1:-1]:
        line = line.strip(_WHITE)
        if line == "":
            if sep == "\n":
                out += sep
            else:
                sep = "\n"
        else:
            out += sep + line
            sep = " "
    return out + sep + lines[-1].lstrip(_WHITE)


def _fold_lines(parts: List[str]) -> str:
    """Line folding (YAML 1.2.2 §6.5): a break between text lines is a space; n empty lines are n breaks."""
    out: List[str] = [parts[0]]
    empty = 0
    for part in parts[1:]:
        if part == "":
            empty += 1
            continue
        out.append("\n" * empty if empty else " ")
        out.append(part)
        empty = 0
    if empty:
        out.append("\n" * empty)
    return "".join(out)


def _join_block(lines: List[str], folded: bool, chomping: Optional[bool]) -> str:
    """A block scalar's value from its lines (indentation removed), by style and chomping (§8.1.1.2)."""
    end = len(lines)
    while end > 0 and lines[end - 1] == "":
        end -= 1
    body, trailing = lines[:end], len(lines) - end
    if not body:
        return "\n" * trailing if chomping is True else ""
    if folded:
        text = _fold_block_lines(body)
    else:
        text = "\n".join(body)
    if chomping is False:
        return text
    if chomping is True:
        return text + "\n" * (trailing + 1)
    return text + "\n"


def _fold_block_lines(body: List[str]) -> str:
    """Folding in a folded block scalar (§8.1.3): between two text lines a break is a space and a run of
    k empty lines is k breaks; around a more-indented line (leading white space) breaks are kept."""
    k = 0
    while body[k] == "":
        k += 1
    out: List[str] = ["\n" * k, body[k]]
    prev = body[k]
    k += 1
    while k < len(body):
        empties = 0
        while body[k] == "":
            empties += 1
            k += 1
        line = body[k]
        more_indented = prev[:1] in _WHITE or line[:1] in _WHITE
        if more_indented:
            out.append("\n" * (empties + 1))
        else:
            out.append("\n" * empties if empties else " ")
        out.append(line)
        prev = line
        k += 1
    return "".join(out)
