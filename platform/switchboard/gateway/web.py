"""The web chat page: `/` and the few static files it loads, and the development sign-in.

The page (static/: index.html, style.css and a few plain JavaScript modules; no build step,
nothing fetched from elsewhere) is an ordinary PROTOCOL.md client of this same gateway. Signing in
takes an access token, as a production application's page would get one from its own backend. For
development, `POST /v1/dev/token` mints one for any user_id, but only when the dev-mode setting is
on (SWITCHBOARD_DEV_MODE); otherwise it answers 403 `forbidden`.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from switchboard import protocol
from switchboard.auth import mint_token
from switchboard.errors import Forbidden, NotFound

from . import entry_points
from .http_api import core_of, json_body

router = APIRouter()

STATIC_DIR = Path(__file__).with_name("static")
# Everything the page loads, with its media type. Nothing else under static/ is served, so a
# path can never reach outside the folder.
JAVASCRIPT = "text/javascript; charset=utf-8"
STATIC_FILES = {
    "app.js": JAVASCRIPT,
    "api.js": JAVASCRIPT,
    "connection.js": JAVASCRIPT,
    "gateways.js": JAVASCRIPT,
    "conversations.js": JAVASCRIPT,
    "view.js": JAVASCRIPT,
    "style.css": "text/css; charset=utf-8",
}


def page_headers(settings) -> dict[str, str]:
    """The page shows text other users wrote: allow scripts and styles from this origin only (no
    inline code), connections back to this origin (CSP 3: 'self' covers ws: and wss: of the same
    host) and to the other regions' configured gateways (the page fails over to them), and no
    framing."""
    connect = " ".join(["'self'", *entry_points.public_origins(settings)])
    return {
        "Content-Security-Policy": (
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            f"connect-src {connect}; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
        ),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        # Revalidate each time: a redeploy must not leave an old app.js talking to a new server.
        "Cache-Control": "no-cache",
    }


@router.get("/", include_in_schema=False)
async def chat_page(request: Request) -> FileResponse:
    # The page loads its files relative to its own URL (static/app.js), so that it works under a
    # region's path; `/regions/eu` is redirected to `/regions/eu/` by Starlette (redirect_slashes).
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8",
                        headers=page_headers(core_of(request).settings))


@router.get("/static/{name}", include_in_schema=False)
async def static_file(request: Request, name: str) -> FileResponse:
    media_type = STATIC_FILES.get(name)
    if media_type is None:
        raise NotFound("no such file")
    return FileResponse(STATIC_DIR / name, media_type=media_type, headers=page_headers(core_of(request).settings))


@router.post("/v1/dev/token")
async def dev_token(request: Request) -> dict:
    """A token for any user_id, for development only: with dev mode off this endpoint would let
    anyone sign in as anyone, so it refuses before reading the body."""
    settings = core_of(request).settings
    if not settings.dev_mode:
        raise Forbidden("development sign-in is off (it needs SWITCHBOARD_DEV_MODE=1); sign in with a token")
    body = await json_body(request)
    user_id = protocol.validate_user_id(body.get("user_id"))
    return {"user_id": user_id, "token": mint_token(settings.jwt_secret, user_id)}
