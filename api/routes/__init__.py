"""The API's routes, one module per resource; each is thin: parse, ask the node, answer.

Every parameter and body carries an OpenAPI example (what the interactive docs fill in and what
schemathesis sends first); the example values below are well-formed, not from any real chain.
"""

from typing import Any, Final

from fastapi import Request
from fastapi.openapi.models import Example

from api.node import Node
from api.settings import Settings

EXAMPLE_ACCOUNT: Final = "9af211329b2fc82e5efe906062c730082819b23fe8394bc435e0b1bf0458eb54"
EXAMPLE_CERTIFIER: Final = "44977dcd3b8475dc80fe44788ad0abc4e6c431da417d642ef63902e27008170e"
EXAMPLE_TX_ID: Final = "1b5b9ccb3e8d006a5230de9bda23ff91edc794d4f56410560830b418528e446c"
EXAMPLE_PUBLIC_KEY: Final = "eb3102a6cb586765d01fad324523ec0bc67b9efd6a2d9589c135adfedf7922cc"
EXAMPLE_SIGNATURE: Final = 2 * "a543997d84f12798350c09bdef2cdb171bf41ed3e4a5f808af2feb0c56263009"


def example(value: Any, summary: str) -> dict[str, Example]:
    """One named OpenAPI example, for `Path(openapi_examples=...)` and `Query(...)`."""
    return {"example": Example(summary=summary, value=value)}


def node_of(request: Request) -> Node:
    node: Node = request.app.state.node
    return node


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings
