"""Uploaded files into lists of texts (.jsonl: a "text" field per line; .txt: documents between blank lines),
and token counts with a private copy of the served tokenizer. Bad input raises InvalidInput (422).
"""

from __future__ import annotations

import copy
import json
import re
import threading
from pathlib import PurePosixPath
from typing import Any

from app.errors import InvalidInput

SUFFIXES = (".jsonl", ".ndjson", ".txt")


def file_name(filename: str) -> str:
    """The file's own name, without any folder a browser or client sent along."""
    return PurePosixPath(filename.replace("\\", "/")).name


def read_file(filename: str, data: bytes) -> list[str]:
    """The texts of an uploaded file, chosen by its suffix. Not UTF-8, an unknown suffix or a bad line: 422."""
    suffix = PurePosixPath(file_name(filename)).suffix.lower()
    if suffix not in SUFFIXES:
        raise InvalidInput(f"file {file_name(filename)!r}: send a .jsonl (a 'text' field per line) or a .txt file")
    try:
        content = data.decode("utf-8-sig")  # a leading byte-order mark is not part of the first text
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InvalidInput(f"the file is not UTF-8 (byte {exc.start}, line {line})") from None
    return jsonl_texts(content) if suffix in (".jsonl", ".ndjson") else txt_texts(content)


def jsonl_texts(content: str) -> list[str]:
    """One JSON object per line, each with a string "text"; blank lines are skipped. 422 names the bad line."""
    texts = []
    # split("\n"), not splitlines(): JSON strings may hold U+2028 and other characters splitlines breaks on
    for number, line in enumerate(content.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record: Any = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"line {number}: not valid JSON: {_where(exc)}") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise InvalidInput(f'line {number}: expected an object with a string "text" field')
        texts.append(record["text"])
    return texts


def _where(exc: json.JSONDecodeError) -> str:
    """The parser's message as a phrase with its column: some ("Unterminated string starting at") end in "at"."""
    what = exc.msg[:1].lower() + exc.msg[1:]
    return f"{what} column {exc.colno}" if what.endswith(" at") else f"{what} at column {exc.colno}"


def txt_texts(content: str) -> list[str]:
    """Documents separated by one or more blank lines, each stripped; line breaks inside a document are kept."""
    content = content.replace("\r\n", "\n").replace("\r", "\n")
    return [doc.strip() for doc in re.split(r"\n[ \t]*\n", content) if doc.strip()]


class TokenCounter:
    """Counts tokens exactly as app.inspect.engine.runs.encode does (default special tokens), off the model thread.

    A fast (Rust) tokenizer raises "Already borrowed" when one thread encodes while another changes its
    truncation settings, so counting uses a private copy of the served tokenizer, one call at a time.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._source: Any = None
        self._copy: Any = None

    def count(self, tokenizer: Any, texts: list[str]) -> int:
        with self._lock:
            if self._source is not tokenizer:
                self._copy, self._source = copy.deepcopy(tokenizer), tokenizer
            ids: list[list[int]] = self._copy(texts)["input_ids"]
            return sum(len(row) for row in ids)
