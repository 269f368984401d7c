"""The dashboard's pages (pure: no I/O): their paths, templates and titles, and the paths served without a token.

A page is an HTML shell without data; its script reads the ids it needs from ``location.pathname``."""

from __future__ import annotations

from dataclasses import dataclass

PREFIX = "/ui"  # every page and static file of the dashboard is under it
STATIC = PREFIX + "/static"


@dataclass(frozen=True, slots=True)
class Page:
    """One page: its ``name`` (the script's renderer, ``<body data-page>``), its route ``path``, its template and the
    ``title`` shown in the tab; ``nav`` the label of its link in the header (empty: not linked from there)."""

    name: str
    path: str
    template: str
    title: str
    nav: str = ""


PAGES: tuple[Page, ...] = (
    Page("login", PREFIX + "/login", "login.html", "Sign in"),
    Page("fleet", PREFIX + "/", "fleet.html", "Fleet", nav="Fleet"),
    Page("device", PREFIX + "/devices/{device_id}", "device.html", "Device"),
    Page("deployments", PREFIX + "/deployments", "deployments.html", "Deployments", nav="Deployments"),
    Page("deployment", PREFIX + "/deployments/{dep_id}", "deployment.html", "Deployment"),
    Page("runs", PREFIX + "/federated", "runs.html", "Federated runs", nav="Federated"),
    Page("run", PREFIX + "/federated/{run_id}", "run.html", "Federated run"),
    Page("models", PREFIX + "/models", "models.html", "Models", nav="Models"),
)


def is_public(path: str) -> bool:
    """Whether ``path`` is the dashboard's, answered without a token: its shells and static files carry no data (an
    unknown path under ``/ui/`` is a 404; a path with a ``..`` segment is not public). Every other path, ``/v1`` above all, stays behind the API's guard."""
    return (path == PREFIX or path.startswith(PREFIX + "/")) and ".." not in path.split("/")


__all__ = ["PAGES", "PREFIX", "STATIC", "Page", "is_public"]
