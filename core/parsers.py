"""Request body parsers.

Size: DRF (3.18) parses JSON and form bodies from ``HttpRequest.body``, so Django's
``DATA_UPLOAD_MAX_MEMORY_SIZE`` (from MAX_REQUEST_BYTES) applies and an oversized body
raises RequestDataTooBig, which core.errors answers with a 413.
tests/core/test_request_limits.py holds that in place across upgrades. Streamed file
uploads will have their own limit where they are accepted.

Depth: the JSON decoder recurses, and a body of nested brackets well under the size
limit exhausts the stack; DRF only catches ValueError, so that would be a 500. This
parser makes it a 400 like any other malformed JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rest_framework import parsers
from rest_framework.exceptions import ParseError


class JSONParser(parsers.JSONParser):
    def parse(
        self,
        stream: Any,
        media_type: str | None = None,
        parser_context: Mapping[str, Any] | None = None,
    ) -> Any:
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - nested too deeply") from None
