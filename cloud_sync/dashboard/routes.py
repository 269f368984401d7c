"""The dashboard's routes, mounted on the API's FastAPI app by :func:`mount` (``create_app``).

- the pages (:data:`.pages.PAGES`): HTML shells rendered once from ``templates/`` at mount time (they carry no data,
  so every answer of a page is the same bytes), served without a token (:func:`.pages.is_public`);
- ``/ui/static/NAME``: the script and style sheet of ``static/``, read once at mount time;
- ``GET /v1/deployments/{dep_id}/progress`` (scope read, behind the API's guard like every ``/v1`` route): a
  deployment's stages and its progress over time (:func:`.progress.progress`).

Pages and static files are sent with a Content-Security-Policy that allows only the dashboard's own scripts, styles
and API calls (``'self'``), no framing, and ``nosniff``.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from fastapi import Depends, FastAPI, HTTPException
from fastapi import Path as PathParam
from fastapi.responses import RedirectResponse, Response

from .pages import PAGES, PREFIX, STATIC, Page
from .progress import progress

if TYPE_CHECKING:
    from ..coordinator.service import Coordinator

HERE = Path(__file__).resolve().parent
TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "Cache-Control": "no-cache"}
_DEP_ID = r"^[A-Za-z0-9_.-]{1,128}$"  # as the API's deployment routes


def static_files(root: Path = HERE / "static") -> dict[str, tuple[bytes, str]]:
    """The static files by name: their bytes and content type (only the types the dashboard uses)."""
    return {p.name: (p.read_bytes(), TYPES[p.suffix]) for p in sorted(root.iterdir())
            if p.is_file() and p.suffix in TYPES}


def render_pages(root: Path = HERE / "templates") -> dict[str, bytes]:
    """Every page's HTML shell, by page name: the templates rendered with nothing but the page table and the static
    files' version hashes (so a changed script is fetched again)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(root)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    stamp = {name: hashlib.sha256(data).hexdigest()[:12] for name, (data, _) in static_files().items()}

    def asset(name: str) -> str:
        return f"{STATIC}/{name}?v={stamp[name]}"

    nav = [(p.nav, p.path) for p in PAGES if p.nav]
    return {p.name: env.get_template(p.template).render(page=p, nav=nav, asset=asset).encode() for p in PAGES}


def mount(app: FastAPI, coord: Coordinator, auth: Callable[..., None]) -> None:
    """Add the dashboard to ``app``, the API of ``coord``; ``auth`` is the API's token dependency."""
    reg = coord.registry
    shells = render_pages()
    files = static_files()

    def page_route(page: Page) -> Callable[..., Response]:
        body = shells[page.name]

        def show() -> Response:
            return Response(body, media_type="text/html; charset=utf-8", headers=HEADERS)

        show.__name__ = f"ui_{page.name}"
        return show

    for page in PAGES:
        app.add_api_route(page.path, page_route(page), methods=["GET"], include_in_schema=False)

    @app.get(PREFIX, include_in_schema=False)
    def ui_root() -> RedirectResponse:
        return RedirectResponse(PREFIX + "/")

    @app.get(STATIC + "/{name}", include_in_schema=False)
    def ui_static(name: str) -> Response:
        found = files.get(name)
        if found is None:
            raise HTTPException(404, f"no static file {name!r}")
        return Response(found[0], media_type=found[1], headers=HEADERS)

    @app.get("/v1/deployments/{dep_id}/progress", dependencies=[Depends(auth)],
             responses={404: {"description": "no such deployment"}})
    def deployment_progress(dep_id: str = PathParam(pattern=_DEP_ID, description="a deployment id")
                            ) -> dict[str, Any]:
        """A deployment's stages (the canary, then the waves: devices planned, jobs dispatched, succeeded, failed,
        canceled; done, current, paused, halted, stopped or waiting) and its install jobs over time (cumulative dispatched, succeeded,
        failed), with its recorded events; what the dashboard's deployment page draws."""
        dep = reg.deployment(dep_id)
        if dep is None or dep.fleet != coord.fleet:
            raise HTTPException(404, f"no deployment {dep_id!r}")
        return progress(dep, reg.jobs(dep_id), reg.events(dep_id), time.time()).to_dict()


__all__ = ["CSP", "mount", "render_pages", "static_files"]
