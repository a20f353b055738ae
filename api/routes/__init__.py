"""The API's routes, one module per resource; each is thin: parse, ask the node, answer.

The dependencies that hand a route the node, its settings and its admission queues are
coroutines: FastAPI runs a plain function dependency in a thread, a hop per request that
waits for a free thread when the node is busy.

Every parameter and body carries an OpenAPI example (what the interactive docs fill in and what
schemathesis sends first); the example values (api.schemas) are well-formed, not from any
real chain.
"""

from typing import Any

from fastapi import Request
from fastapi.openapi.models import Example

from api.admission import Admission
from api.node import Node
from api.settings import Settings


def example(value: Any, summary: str) -> dict[str, Example]:
    """One named OpenAPI example, for `Path(openapi_examples=...)` and `Query(...)`."""
    return {"example": Example(summary=summary, value=value)}


async def node_of(request: Request) -> Node:
    node: Node = request.app.state.node
    return node


async def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def admission_of(request: Request) -> Admission:
    admission: Admission = request.app.state.admission
    return admission
