"""The ASGI application: the JSON API under /api/v1 and the dashboard's pages at /.

Owned by the API; the dashboard adds its pages through `conveyor.web.pages.router` and its static
files through `conveyor.web.pages.STATIC_DIR`.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from conveyor.api import routes
from conveyor.web import pages

API_PREFIX = "/api/v1"


def create_app() -> FastAPI:
    app = FastAPI(
        title="conveyor",
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=None,
        redoc_url=None,
    )
    app.include_router(routes.router, prefix=API_PREFIX)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=pages.STATIC_DIR), name="static")
    return app
