"""The gateway's web UI: the agent console, the call review page and the timeline chart as PNG.

``routes.router`` is included by ``gateway.app.create_app``; the pages are static files (plain HTML, CSS
and JavaScript modules, no build step, nothing fetched from elsewhere) that speak the public API.
"""
