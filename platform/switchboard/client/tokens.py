"""Access tokens for the SDK: a fixed string, or a callable that returns a fresh one.

Tokens expire (`exp`), so a long-lived client should pass a callable: it is asked again for every
new WebSocket session and every HTTP request, and may be a plain or an async function.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

TokenSource = str | Callable[[], "str | Awaitable[str]"]


async def current_token(source: TokenSource) -> str:
    if isinstance(source, str):
        return source
    token = source()
    if inspect.isawaitable(token):
        token = await token
    if not isinstance(token, str) or not token:
        raise TypeError("the token callable must return a non-empty string")
    return token
