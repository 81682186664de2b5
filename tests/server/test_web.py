"""The web page and its assets as the app serves them (the page in a browser: test_live.py)."""

from __future__ import annotations


def test_web_page_and_assets(client):
    r = client.get("/")
    assert r.status_code == 200 and r.mimetype == "text/html"
    html = r.get_data(as_text=True)
    assert 'id="file"' in html and "/static/app.js" in html
    assert "default-src 'self'" in r.headers["Content-Security-Policy"]
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200
    # The same page under /static/ had no policy.
    page = client.get("/static/index.html")
    assert (
        page.status_code == 200 and "default-src 'self'" in page.headers["Content-Security-Policy"]
    )
