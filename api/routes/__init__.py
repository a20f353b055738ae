"""The API's routes, one module per resource; each is thin: parse, ask the node, answer."""

from fastapi import Request

from api.node import Node
from api.settings import Settings


def node_of(request: Request) -> Node:
    node: Node = request.app.state.node
    return node


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings
