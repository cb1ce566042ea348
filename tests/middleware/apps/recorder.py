"""An outermost ASGI wrapper that records what the app below it sends and raises."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .inprocess import ASGIApp, Message, Receive, Scope, Send


@dataclass
class Recorder:
    """Records every message sent by ``app`` (per scope type) and every exception it raises."""

    app: ASGIApp
    sent: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]

        async def recording_send(message: Message) -> None:
            self.sent.append((kind, dict(message)))
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        except Exception as error:
            self.errors.append(f"{type(error).__name__}: {error}")
            raise
