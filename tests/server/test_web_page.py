"""The web page's layout, accessibility and error handling in headless Chromium, against a real
server (the fixtures of test_live.py); answers the server cannot give (odd metadata, an empty
catalog, a server that never answers) are played with page.route."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from tests.server import test_live
from tests.server.test_live import headless_chromium

# test_live.py's fixtures: a real server on a free local port (one for this module).
live, live_index, query_image = test_live.live, test_live.live_index, test_live.query_image

WAIT = 20_000
CONTROLS = ["k", "label-filter", "ranking", "price-min", "price-max"]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with headless_chromium(tmp_path_factory.mktemp("profile")) as context:
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser):
    """A fresh tab; it must end without a page error."""
    tab = browser.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    yield tab
    tab.unroute_all(behavior="ignoreErrors")
    tab.close()
    assert errors == []


def open_page(page, live, query: str = "", cards: bool = True) -> None:  # noqa: ANN001
    page.goto(live.base + "/" + query)
    page.wait_for_selector("#server-info:has-text('catalog phones')", timeout=WAIT)
    if cards:
        page.wait_for_selector(".neighbor", timeout=WAIT)


def fulfill_json(route, body, status: int = 200) -> None:  # noqa: ANN001
    route.fulfill(status=status, body=json.dumps(body), content_type="application/json")


def wait_until(page, condition, seconds: float = 10) -> bool:  # noqa: ANN001
    """Poll ``condition`` while the page's events come in."""
    for _ in range(int(seconds * 10)):
        if condition():
            return True
        page.wait_for_timeout(100)
    return condition()


def upload(page, path: Path) -> None:  # noqa: ANN001
    page.set_input_files("#file", str(path))
    page.wait_for_selector("#prediction:not([hidden])", timeout=WAIT)


# -- layout -------------------------------------------------------------------------------------
@pytest.mark.parametrize("width", [1280, 800])
def test_every_option_is_clickable_and_inside_its_column(page, live, width):
    """The options row was 724 px wide in a 320 px column: the results grid covered Order and
    Price, and clicks on them landed on cards."""
    page.set_viewport_size({"width": width, "height": 900})
    open_page(page, live)
    column = page.locator("section.query").bounding_box()
    options = page.locator(".options").bounding_box()
    assert column and options
    assert options["x"] + options["width"] <= column["x"] + column["width"] + 0.5
    for control in CONTROLS:
        page.locator(f"#{control}").scroll_into_view_if_needed()
        hit = page.evaluate(
            """id => {
                const c = document.getElementById(id), r = c.getBoundingClientRect();
                const at = document.elementFromPoint(r.x + r.width / 2, r.y + r.height / 2);
                const label = c.closest('label');
                return at === c || c.contains(at) || (label !== null && label.contains(at));
            }""",
            control,
        )
        assert hit, f"#{control} is covered at {width} px"


@pytest.mark.parametrize("width", [320, 390])
def test_no_horizontal_scroll_on_phones(page, live, width):
    page.set_viewport_size({"width": width, "height": 800})
    open_page(page, live)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    hint, zone = page.locator("#drop-hint").bounding_box(), page.locator("#dropzone").bounding_box()
    assert hint and zone and hint["x"] + hint["width"] <= zone["x"] + zone["width"]
    assert zone["x"] + zone["width"] <= width


# -- odd catalog metadata -----------------------------------------------------------------------
def fake_item(item_id: str, title, price, score=None) -> dict:  # noqa: ANN001
    item = {"id": item_id, "title": title, "price": price, "label": "flux-neo", "brand": "flux"}
    if score is not None:
        item["score"] = score
    return item


FAKE_ITEMS = [
    fake_item("long", "A" * 1000, 1299),
    fake_item("bidi", "Galaxy \u202eS24 Ultra", "1 299,00 €"),
    fake_item("flag", True, False),
    fake_item("call", "Pixel", "call us"),
    fake_item("text-number", "Nokia", "499.5"),
    fake_item("object", "Obj", {"amount": 3}),
]


def test_cards_are_buttons_in_list_items_with_sane_prices_and_titles(page, live):
    """A card was an <li role=button> (the list lost its items); prices all got a "$"
    ("$call us", "$false"), a title of true showed "true"; a 1000-letter name made the heading
    12,759 px wide; a U+202E in a name flipped the heading's own words."""
    page.route("**/v1/items?*", lambda route: fulfill_json(route, {
        "items": FAKE_ITEMS, "next_cursor": None,
    }))  # fmt: skip
    neighbours = [fake_item("n1", "Neighbour", 10, score=0.9)]
    page.route("**/v1/items/*/similar?*", lambda route: fulfill_json(route, {
        "neighbors": neighbours, "ranking": "class", "timing_ms": {"total": 1.0},
    }))  # fmt: skip
    open_page(page, live)
    assert page.locator("#neighbors > li > button.card.neighbor").count() == len(FAKE_ITEMS)
    assert page.locator("#neighbors > .neighbor, #neighbors [role=button]").count() == 0
    prices = page.eval_on_selector_all(
        ".neighbor", "cards => cards.map(c => c.querySelector('.meta').textContent)"
    )
    assert prices == [
        "flux-neo$1,299",
        "flux-neo1 299,00 €",
        "flux-neo",
        "flux-neocall us",
        "flux-neo$499.50",
        "flux-neo",
    ]
    assert page.text_content(".neighbor[data-id='flag'] .title") == "flag"

    # A name with a right-to-left override stays in its own bidi box.
    page.click(".neighbor[data-id='bidi']")
    page.wait_for_selector("#results-title:has-text('Similar to')", timeout=WAIT)
    assert page.text_content("#results-title bdi") == "Galaxy \u202eS24 Ultra"
    assert page.text_content("#status") == "1 phone similar to Galaxy \u202eS24 Ultra."
    assert page.text_content("#status bdi") == "Galaxy \u202eS24 Ultra"

    # A 1000-letter name wraps: no page wider than the window, the grid keeps its columns.
    page.click("#browse")
    page.wait_for_selector("#results-title:text-is('Catalog phones')", timeout=WAIT)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    tops = page.eval_on_selector_all(
        ".neighbor", "cards => cards.map(c => Math.round(c.getBoundingClientRect().top))"
    )
    assert len(set(tops)) < len(tops), "every card on a row of its own"
    page.click(".neighbor[data-id='long']")
    page.wait_for_selector("#results-title:has-text('Similar to')", timeout=WAIT)
    heading = page.locator("#results-title").bounding_box()
    assert heading and heading["x"] + heading["width"] <= 1280
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


def test_show_more_says_how_many_were_added(page, live):
    def pages(route):  # noqa: ANN001, ANN202
        if "cursor=" in route.request.url:
            fulfill_json(route, {"items": FAKE_ITEMS[:2], "next_cursor": None})
        else:
            fulfill_json(route, {"items": FAKE_ITEMS, "next_cursor": "next"})

    page.route("**/v1/items?*", pages)
    open_page(page, live)
    page.locator("#more").focus()
    page.keyboard.press("Enter")
    page.wait_for_selector("#status:text-is('2 more phones shown.')", timeout=WAIT)
    assert page.locator(".neighbor").count() == len(FAKE_ITEMS) + 2
    # The button went with the last page: the focus goes on to the first new phone.
    assert page.evaluate("document.activeElement.dataset.id") == FAKE_ITEMS[0]["id"]


def test_keyboard_opening_moves_focus_to_the_results_heading(page, live):
    """Enter on a card or on "back to the catalog" dropped the focus to <body>."""
    open_page(page, live)
    page.locator(".neighbor").nth(1).focus()
    page.keyboard.press("Enter")
    page.wait_for_selector("#results-title:has-text('Similar to')", timeout=WAIT)
    page.wait_for_function("() => document.activeElement.id === 'results-title'", timeout=WAIT)
    page.locator("#browse").focus()
    page.keyboard.press("Enter")
    page.wait_for_selector("#results-title:text-is('Catalog phones')", timeout=WAIT)
    page.wait_for_function("() => document.activeElement.id === 'results-title'", timeout=WAIT)
    # Thumbnails are decorative: the title beside them names the phone.
    assert page.eval_on_selector_all(".neighbor img", "imgs => imgs.every(i => i.alt === '')")


# -- uploads ------------------------------------------------------------------------------------
def test_upload_names_input_announces_prediction_and_leaves_with_the_view(page, live, query_image):
    """After an upload the file input lost its name; the status did not say the class; the
    same file chosen again sent nothing; a card clicked after it kept "Predicted class" and
    the photo beside unrelated phones."""
    open_page(page, live)
    upload(page, query_image)
    status = page.text_content("#status") or ""
    label = page.text_content("#prediction-label")
    assert re.fullmatch(rf"Predicted {re.escape(label)} \(\d+\.\d%\); \d+ similar phones? found\.",
                        status), status  # fmt: skip
    assert page.get_by_label("Choose a phone photo").count() == 1
    assert page.get_attribute("#preview", "alt") == "your photo"
    # The input is emptied, so the browser calls choosing the same file again a change.
    assert page.evaluate("document.getElementById('file').files.length") == 0
    with page.expect_request("**/v1/search?*", timeout=WAIT):
        page.set_input_files("#file", str(query_image))
    page.wait_for_selector("#status:has-text('Predicted')", timeout=WAIT)

    page.locator(".neighbor").first.click()
    page.wait_for_selector("#results-title:has-text('Similar to')", timeout=WAIT)
    assert not page.is_visible("#prediction")
    assert not page.is_visible("#preview") and page.is_visible("#drop-hint")


def test_a_file_the_browser_cannot_show_leaves_no_broken_preview(page, live, tmp_path):
    open_page(page, live)
    bad = tmp_path / "fake.jpg"
    bad.write_text("not an image")
    page.set_input_files("#file", str(bad))
    page.wait_for_selector("#status.error", timeout=WAIT)
    page.wait_for_selector("#drop-hint:visible", timeout=WAIT)
    assert not page.is_visible("#preview")


def test_files_dropped_anywhere_or_pasted_are_searched(page, live, query_image):
    """A file dropped beside the drop zone opened in the tab, leaving the page; a paste did
    nothing."""
    open_page(page, live)
    data = base64.b64encode(query_image.read_bytes()).decode()
    make = """data => { const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], 'phone.jpg', {type: 'image/jpeg'}));
        dt.items.add(new File(['x'], 'notes.txt', {type: 'text/plain'}));
        return dt; }"""
    prevented = page.evaluate(
        f"""data => {{ const dt = ({make})(data);
            const e = new DragEvent('drop', {{dataTransfer: dt, bubbles: true, cancelable: true}});
            document.querySelector('footer').dispatchEvent(e);
            return e.defaultPrevented; }}""",
        data,
    )
    assert prevented
    page.wait_for_selector("#status:has-text('Predicted')", timeout=WAIT)
    assert "2 files dropped; only the first, phone.jpg, is used." in page.text_content("#status")
    page.click(".neighbor >> nth=0")
    page.wait_for_selector("#results-title:has-text('Similar to')", timeout=WAIT)
    page.evaluate(
        f"""data => {{ const dt = ({make})(data);
            document.body.dispatchEvent(new ClipboardEvent('paste',
                {{clipboardData: dt, bubbles: true, cancelable: true}})); }}""",
        data,
    )
    page.wait_for_selector("#results-title:has-text('Nearest')", timeout=WAIT)
    page.wait_for_selector("#prediction:not([hidden])", timeout=WAIT)


def test_a_search_that_never_answers_times_out_and_a_newer_view_aborts_it(page, live, query_image):
    """A /v1/search that never answered left "Searching…" for good."""
    page.route("**/v1/search?*", lambda route: None)  # held: never answered
    failed: list[str] = []
    page.on("requestfailed", lambda r: failed.append(r.url))
    open_page(page, live, "?timeout_s=1")
    page.set_input_files("#file", str(query_image))
    page.wait_for_selector(
        "#status.error:has-text('the server did not answer in 1 s; try again')", timeout=WAIT
    )
    assert wait_until(page, lambda: len(failed) == 1)
    # A card clicked while a search is held aborts that search.
    open_page(page, live, "?timeout_s=10")
    page.set_input_files("#file", str(query_image))
    page.wait_for_selector("#status:has-text('Searching')", timeout=WAIT)
    page.locator(".neighbor").first.click()
    page.wait_for_selector("#results-title:has-text('Similar to')", timeout=WAIT)
    assert wait_until(page, lambda: len(failed) == 2)
    assert all("/v1/search" in url for url in failed)
    assert "Searching" not in (page.text_content("#status") or "")


# -- the server's state -------------------------------------------------------------------------
def test_info_is_asked_again_while_the_server_loads(page, live):
    """A /v1/info refused at load (503 loading) left the page without a catalog for good."""
    calls: list[int] = []

    def loading_once(route):  # noqa: ANN001, ANN202
        calls.append(1)
        if len(calls) == 1:
            body = {"error": {"code": "loading", "message": "the model is loading"}}
            fulfill_json(route, body, status=503)
        else:
            route.continue_()

    page.route("**/v1/info", loading_once)
    page.goto(live.base + "/")
    page.wait_for_selector(
        "#server-info:has-text('server not ready (the model is loading); trying again in 2 s')",
        timeout=WAIT,
    )
    page.wait_for_selector("#server-info:has-text('catalog phones')", timeout=WAIT)
    page.wait_for_selector(".neighbor", timeout=WAIT)
    assert len(calls) == 2


def test_an_empty_catalog_and_unreachable_server_say_so(page, live):
    """A search on an empty catalog said "No catalog phone matches." (re-ranked by predicted
    class); raw "Failed to fetch" and "server answered 502 without JSON" reached users."""
    _, info = live.json("GET", "/v1/info")
    info["index"]["size"] = 0
    page.route("**/v1/info", lambda route: fulfill_json(route, info))
    page.route("**/v1/items?*", lambda route: fulfill_json(route, {
        "items": [], "next_cursor": None,
    }))  # fmt: skip
    prediction = {"label": "flux-neo", "score": 0.922, "source": "classifier", "top": []}
    page.route("**/v1/search?*", lambda route: fulfill_json(route, {
        "prediction": prediction, "neighbors": [], "ranking": "class", "timing_ms": {},
    }))  # fmt: skip
    open_page(page, live, cards=False)
    page.wait_for_selector("#results-hint:has-text('The catalog is empty.')", timeout=WAIT)
    page.select_option("#label-filter", info["classes"][0])  # filtered, none match: not empty
    page.wait_for_selector(
        "#results-hint:has-text('No catalog phone matches the filter.')", timeout=WAIT
    )
    page.select_option("#label-filter", "")
    page.wait_for_selector("#results-hint:has-text('The catalog is empty.')", timeout=WAIT)
    page.set_input_files("#file", str(Path(__file__)))  # the answer is played anyway
    page.wait_for_selector("#status:has-text('Predicted')", timeout=WAIT)
    assert page.text_content("#status") == "Predicted flux-neo (92.2%); the catalog is empty."
    assert page.text_content("#results-title") == "Nearest catalog phones"
    assert page.text_content("#results-hint") == "The catalog is empty."

    page.unroute("**/v1/items?*")
    page.route("**/v1/items?*", lambda route: route.abort())
    page.click("#browse")
    page.wait_for_selector("#status.error:has-text('cannot reach the server')", timeout=WAIT)
    page.unroute("**/v1/items?*")
    page.route("**/v1/items?*", lambda route: route.fulfill(status=502, body="<html>bad</html>"))
    page.select_option("#k", "12")
    page.wait_for_selector("#status.error:has-text('the server answered 502 (')", timeout=WAIT)
    assert "without JSON" not in page.text_content("#status")


def test_the_page_has_a_favicon_and_no_console_error(page, live):
    messages: list[str] = []
    page.on("console", lambda m: messages.append(m.text) if m.type == "error" else None)
    open_page(page, live)
    href = page.get_attribute("link[rel=icon]", "href")
    assert href == "/static/favicon.svg"
    status, headers, data = live.request("GET", href)
    assert status == 200 and headers["content-type"].startswith("image/svg+xml")
    assert b"<svg" in data
    page.reload()
    page.wait_for_selector(".neighbor", timeout=WAIT)
    assert messages == []
