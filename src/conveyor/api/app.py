"""The ASGI application: the JSON API under /api/v1 and the dashboard's pages at /.

Owned by the API; the dashboard adds its pages through `conveyor.web.pages.router` and its static
files through `conveyor.web.pages.STATIC_DIR`.
"""

from __future__ import annotations

import gc
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from conveyor.api import auth, routes
from conveyor.api.auth import ApiError
from conveyor.api.events import Hub
from conveyor.api.state import Server, Settings
from conveyor.auth import oidc_routes
from conveyor.web import pages

API_PREFIX = "/api/v1"


def default_settings() -> Settings:
    """The project of the current directory (or $CONVEYOR_PROJECT), for `create_app()`."""
    return Settings(project_dir=Path(os.environ.get("CONVEYOR_PROJECT", ".")).resolve())


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or default_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        srv = Server.open(settings)
        hub = Hub(srv)
        app.state.conveyor = srv
        app.state.hub = hub
        await hub.start()
        if settings.freeze_heap:
            srv.config()  # parsed once now, frozen with the rest
            gc.collect()
            gc.freeze()
        try:
            yield
        finally:
            await hub.stop()
            srv.close()

    app = FastAPI(
        title="conveyor",
        description="The conveyor HTTP API: see docs/api.md.",
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(
            {"error": exc.reason, **exc.extra}, status_code=exc.status, headers=exc.headers
        )

    app.include_router(routes.router, prefix=API_PREFIX)
    app.include_router(auth.router)
    app.include_router(oidc_routes.router)  # /auth/oidc/login and /callback ([access.oidc])
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=pages.STATIC_DIR), name="static")
    return app
