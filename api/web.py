"""The web page for people: static HTML/CSS/JS modules served at `/`, built only on the public REST
API (no second backend, no build step), plus a generated sample image so the page works on a machine
that has no sample files."""

from __future__ import annotations

from functools import lru_cache

from flask import Blueprint, Response, send_from_directory

from layerq.sample import sample_png

# The page's own assets live under /web/ so they can never shadow an API path.
bp = Blueprint("web", __name__, static_folder="static", static_url_path="/web")


@bp.get("/")
def index() -> Response:
    resp = send_from_directory(bp.static_folder, "index.html", max_age=0)
    # The page talks only to this origin; it never needs to be framed.
    resp.headers["X-Frame-Options"] = "DENY"
    return resp


@lru_cache(maxsize=1)
def _sample() -> bytes:
    return sample_png()


@bp.get("/sample.png")
def sample() -> Response:
    """The poster-like sample the page offers with "Use the sample" (the same one `layerq demo` uses)."""
    return Response(_sample(), mimetype="image/png", headers={"Cache-Control": "public, max-age=86400"})
