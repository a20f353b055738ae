"""The media type of an RFC 9457 problem, shared by the API (`api.problems`) and its client
(`api.client`) from a module that loads nothing: the command line's client and verify
commands import the client without the web framework (`api.cli`)."""

from __future__ import annotations

from typing import Final

PROBLEM_MEDIA_TYPE: Final = "application/problem+json"
