"""``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) served from installed files, never a CDN.

FastAPI's own pages load Swagger UI's and ReDoc's JavaScript and CSS from a public CDN (and
ReDoc's fonts from Google), so on an air-gapped host they render blank. The
``fastapi-offline`` package ships both bundles (Swagger UI 5, ReDoc 2: both read the
OpenAPI 3.1 this app describes) as package data; this module serves those files under
``/docs/...`` and ``/redoc/...`` as exact routes, which the API-key guard can leave open by
name, and builds the two pages with FastAPI's HTML helpers pointed at them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import FileResponse, HTMLResponse

DOCS = "/docs"
REDOC = "/redoc"
OAUTH2_REDIRECT = "/docs/oauth2-redirect"
ASSETS: dict[str, tuple[str, str]] = {
    "/docs/swagger-ui-bundle.js": ("swagger-ui-bundle.js", "text/javascript"),
    "/docs/swagger-ui.css": ("swagger-ui.css", "text/css"),
    "/docs/favicon.png": ("favicon.png", "image/png"),
    "/redoc/redoc.standalone.js": ("redoc.standalone.js", "text/javascript"),
}
"""Route -> (file in ``fastapi_offline/static``, media type)."""
CACHE = "public, max-age=86400"
"""The files change only with the installed package; a day spares a browser refetching
2.8 MB on every visit without pinning an old bundle for long after an upgrade."""


def asset_dir() -> Path:
    """The installed Swagger UI / ReDoc files; raises naming what is missing."""
    root = Path(str(files("fastapi_offline") / "static"))
    missing = [name for name, _ in ASSETS.values() if not (root / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"fastapi-offline at {root} lacks {', '.join(missing)}: /docs and /redoc would "
            "render blank (reinstall the package: pip install 'fastapi-offline>=1.7.7,<2')"
        )
    return root


def add_docs(app: FastAPI) -> frozenset[str]:
    """Add ``/docs``, ``/docs/oauth2-redirect``, ``/redoc`` and their assets to ``app``
    (created with ``docs_url=None, redoc_url=None``); returns every path added, for the
    guard's open paths. Fails at import of the service, not at a visitor's first page."""
    if app.docs_url is not None or app.redoc_url is not None:
        raise ValueError("create the FastAPI app with docs_url=None and redoc_url=None")
    root = asset_dir()
    openapi_url = app.openapi_url or "/openapi.json"
    favicon = "/docs/favicon.png"

    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=OAUTH2_REDIRECT,
            swagger_js_url="/docs/swagger-ui-bundle.js",
            swagger_css_url="/docs/swagger-ui.css",
            swagger_favicon_url=favicon,
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    async def oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url="/redoc/redoc.standalone.js",
            redoc_favicon_url=favicon,
            with_google_fonts=False,
        )

    app.add_api_route(DOCS, swagger_ui, methods=["GET"], include_in_schema=False)
    app.add_api_route(OAUTH2_REDIRECT, oauth2_redirect, methods=["GET"], include_in_schema=False)
    app.add_api_route(REDOC, redoc, methods=["GET"], include_in_schema=False)
    for route, (name, media_type) in ASSETS.items():
        app.add_api_route(
            route,
            _file_endpoint(root / name, media_type),
            methods=["GET"],
            include_in_schema=False,
        )
    return frozenset({DOCS, OAUTH2_REDIRECT, REDOC, *ASSETS})


def _file_endpoint(path: Path, media_type: str) -> Callable[[], Awaitable[FileResponse]]:
    """One endpoint per file: exact routes, so the guard can open them by name."""

    async def serve() -> FileResponse:
        return FileResponse(path, media_type=media_type, headers={"Cache-Control": CACHE})

    return serve
