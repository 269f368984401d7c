"""The coordinator's web dashboard (issue 15): HTML shells and static files served under ``/ui/`` by the API's own
process, mounted by :func:`~edgefleet.cloud_sync.coordinator.api.create_app` (:func:`.routes.mount`).

The shells carry no data and need no token: the page's own script (``static/*.js``, no third-party code) asks the
operator for an API token on ``/ui/login``, keeps it in the tab's ``sessionStorage`` and calls the ``/v1`` JSON API
with ``Authorization: Bearer``, which the API's ASGI guard checks as for any client. The pages poll the API for live
updates. Charts are inline SVG drawn by the script.

- :mod:`.pages`: the table of pages (pure), and which paths are the dashboard's public ones;
- :mod:`.progress`: a deployment's stages and its progress over time from its registry rows (pure);
- :mod:`.routes`: the FastAPI routes (the pages, the static files, ``GET /v1/deployments/{id}/progress``).
"""
