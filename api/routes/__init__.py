"""The API's routes, one module per resource; each is thin: parse, ask the node, answer.

Every parameter and body carries an OpenAPI example (what the interactive docs fill in and what
schemathesis sends first); the example values (api.schemas) are well-formed, not from any
real chain.
"""

from typing import Any

from fastapi import Request
from fastapi.openapi.models import Example

from api.node import Node
from api.settings import Settings


def example(value: Any, summary: str) -> dict[str, Example]:
    """One named OpenAPI example, for `Path(openapi_examples=...)` and `Query(...)`."""
    return {"example": Example(summary=summary, value=value)}


def node_of(request: Request) -> Node:
    node: Node = request.app.state.node
    return node


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings
