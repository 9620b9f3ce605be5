"""HTML pages (reports, the leaderboard): the headers that keep them self-contained."""

from __future__ import annotations

from fastapi.responses import HTMLResponse

# The pages are one document each: inline <style>, inline SVG, PNGs as data: URLs, no
# script, no fonts, no requests. Everything else is refused, and the page may not be framed
# or post forms. Links carry their token in the URL, so no Referer may leak it.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "private, no-store",
}


def html_page(document: str) -> HTMLResponse:
    """``document`` as an HTML response with the pages' security headers."""
    return HTMLResponse(document, headers=PAGE_HEADERS)
