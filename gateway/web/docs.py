"""The API documentation at /docs, served from the package: Swagger UI's files come from the
``swagger-ui-bundle-v2`` wheel (Swagger UI 5, which reads FastAPI's OpenAPI 3.1), so the page works
offline. FastAPI's default page loads them from a CDN: blank on a self-hosted gateway without internet."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

DOCS_PATH = "/docs"
STATIC_PATH = "/docs/static"


def add_docs(app: FastAPI) -> None:
    """/docs (Swagger UI on the app's OpenAPI schema) with its scripts and styles under /docs/static.
    Create the app with ``docs_url=None, redoc_url=None`` so FastAPI's CDN pages are not registered."""
    app.mount(STATIC_PATH, StaticFiles(directory=swagger_ui_path), name="docs-static")

    @app.get(DOCS_PATH, include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title}: API",
            oauth2_redirect_url=f"{DOCS_PATH}/oauth2-redirect",
            swagger_js_url=f"{STATIC_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{STATIC_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{STATIC_PATH}/favicon-32x32.png",
        )

    @app.get(f"{DOCS_PATH}/oauth2-redirect", include_in_schema=False)
    async def oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()
