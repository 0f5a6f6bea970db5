"""The dashboard at /ui in a real headless Chromium (Debian's, driven by Playwright) against real
`mmserve serve` processes: the built-in models for the models table, unload and load, the
playground, logs and charts; fake models behind API keys for the key prompt and the scopes.

Screenshots of each view go to tests/e2e/screenshots/ (ignored by git), to be looked at.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
from PIL import Image, ImageDraw, ImageFont
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
# Headless as root on a machine with no GPU and no outside network (see docs/dashboard.md).
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = Path(__file__).resolve().parent / "screenshots"
expect.set_options(timeout=15_000)  # a page that polls every second, on a busy 2-core machine
ADMIN, INFERENCE = "k-dash-admin-0123456789", "k-dash-inference-0123456789"
KEYED = f"""
api_keys:
  - {{key: {ADMIN}, name: ops}}
  - {{key: {INFERENCE}, scopes: [inference], name: apps}}
models:
  - {{name: echo, kind: llm, backend: fake, options: {{delay: 0.02}}}}
  - {{name: vec, kind: embedding, backend: fake}}
"""


# ---- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: `make test` installs Debian's chromium"
    SHOTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server(server_factory):
    server = server_factory(None)  # no config: the built-in models
    models = server.wait_models(timeout=600)
    lazy = {"nsfw", "qwen2.5-0.5b"}  # preload: false
    assert all(m["state"] == "ready" for m in models if m["name"] not in lazy), models
    return server


@pytest.fixture(scope="module")
def keyed(server_factory, tmp_path_factory: pytest.TempPathFactory):
    config = tmp_path_factory.mktemp("dashboard-keys") / "config.yaml"
    config.write_text(KEYED)
    server = server_factory(config)
    server.api_key = ADMIN
    server.wait_models()
    return server


def open_page(browser: Browser, url: str) -> Iterator[Page]:
    """A fresh tab (its own session storage) on `url`; fails the test on any script error."""
    context = browser.new_context(viewport={"width": 1400, "height": 860})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url)
    yield page
    context.close()
    assert not errors, f"script errors on the page: {errors}"


@pytest.fixture
def page(browser: Browser, server) -> Iterator[Page]:
    yield from open_page(browser, f"{server.url}/ui")


@pytest.fixture
def keyed_page(browser: Browser, keyed) -> Iterator[Page]:
    yield from open_page(browser, f"{keyed.url}/ui")


# ---- helpers -----------------------------------------------------------------------------------


def row(page: Page, model: str) -> Locator:
    return page.locator(f'#models tr[data-model="{model}"]')


def state_of(page: Page, model: str) -> Locator:
    return row(page, model).locator("[data-state]")


def shot(page: Page, name: str) -> None:
    page.screenshot(path=SHOTS / f"{name}.png", full_page=True)


def tab(page: Page, name: str) -> None:
    page.click(f'#tabs button[data-tab="{name}"]')


def play(page: Page, name: str) -> None:
    tab(page, "playground")
    page.click(f'#play-tabs button[data-play="{name}"]')


def gone(pid: int) -> bool:
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def words(text: str) -> bytes:
    image = Image.new("RGB", (900, 140), "white")
    ImageDraw.Draw(image).text((20, 40), text, fill="black", font=ImageFont.load_default(48))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def chelsea() -> Path:
    spec = importlib.util.find_spec("skimage")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "chelsea.png"


def drop_file(page: Page, selector: str, name: str, content: bytes, mime: str) -> None:
    """Drag and drop a file onto `selector`, as a user dropping it from the desktop does."""
    transfer = page.evaluate_handle(
        """([b64, name, mime]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, { type: mime }));
            return transfer;
        }""",
        [base64.b64encode(content).decode(), name, mime],
    )
    page.dispatch_event(selector, "dragover", {"dataTransfer": transfer})
    page.dispatch_event(selector, "drop", {"dataTransfer": transfer})


# ---- the built-in models -----------------------------------------------------------------------


def test_a_browser_at_the_root_lands_on_the_dashboard(browser: Browser, server) -> None:
    for page in open_page(browser, f"{server.url}/"):
        assert page.url == f"{server.url}/ui"
        expect(page.locator("#models tbody tr")).to_have_count(7)
    api_client = httpx.get(f"{server.url}/", headers={"accept": "application/json"})
    assert api_client.status_code == 404  # an API client still finds nothing at /


def test_the_models_table_shows_the_built_in_models(page: Page, server) -> None:
    expected = {"smollm2", "gemma3-270m", "minilm", "ocr", "imagenet"}
    for name in expected:
        expect(state_of(page, name)).to_have_text("ready")
    expect(state_of(page, "nsfw")).to_have_text("unloaded")  # it loads on first use
    expect(state_of(page, "qwen2.5-0.5b")).to_have_text("unloaded")  # so does this one
    status = server.status()
    smollm2 = next(m for m in status["models"] if m["name"] == "smollm2")
    pid = smollm2["replicas"][0]["pid"]
    slots = smollm2["replicas"][0]["details"]["slots"]["total"]  # llama-server's
    expect(row(page, "smollm2").locator(".replica")).to_contain_text(
        f"pid {pid} · cpu · 0/{slots} slots busy"
    )
    expect(row(page, "ocr").locator(".replica")).to_contain_text("in server")  # in-process
    expect(page.locator("#room")).to_contain_text(f"loaded {status['loaded_models']}")
    expect(row(page, "minilm").locator("td").nth(1)).to_contain_text("ready")
    shot(page, "models")


def test_unload_from_the_page_then_load_again(page: Page, server) -> None:
    pid = server.model("minilm")["replicas"][0]["pid"]
    minilm = row(page, "minilm")
    expect(state_of(page, "minilm")).to_have_text("ready")
    minilm.locator("[data-action=unload]").click()
    expect(page.locator("#confirm-dialog")).to_be_visible()
    expect(page.locator("#confirm-text")).to_contain_text(f"pid {pid}")
    shot(page, "unload-confirm")
    page.click("#confirm-cancel")  # the confirmation guards: cancelling changes nothing
    expect(page.locator("#confirm-dialog")).to_be_hidden()
    assert server.model("minilm")["state"] == "ready"

    minilm.locator("[data-action=unload]").click()
    page.click("#confirm-ok")
    expect(state_of(page, "minilm")).to_have_text("unloaded", timeout=30_000)
    server.wait_until(lambda: gone(pid))
    assert server.model("minilm")["state"] == "unloaded"
    expect(minilm.locator("[data-action=load]")).to_be_enabled()

    minilm.locator("[data-action=load]").click()
    expect(state_of(page, "minilm")).to_have_text("ready", timeout=120_000)
    new_pid = server.model("minilm")["replicas"][0]["pid"]
    assert new_pid != pid and psutil.pid_exists(new_pid)
    expect(minilm.locator(".replica")).to_contain_text(f"pid {new_pid}")


def test_a_streamed_chat_shows_tokens_as_they_arrive(page: Page, server) -> None:
    question = "Name three colours."
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": question}],
        "temperature": 0,
        "max_tokens": 40,
    }
    # Greedy decoding, yet llama.cpp's first answer to a prompt differs from the later ones (a
    # cold prompt cache): warm it, so the page's answer can be compared with the API's.
    server.post("/v1/chat/completions", body)
    reference = server.post("/v1/chat/completions", body).json()["choices"][0]["message"]
    play(page, "chat")
    expect(page.locator("#chat-model")).to_have_value("smollm2")  # the only chat model
    page.fill("#chat-temperature", "0")
    page.fill("#chat-max-tokens", "40")
    # Record the answer's length at every change of the page, to see it grow token by token.
    page.evaluate("""() => {
        window.lengths = [];
        new MutationObserver(() => {
            const bubble = document.querySelector("#chat-log .bubble.assistant");
            if (bubble) window.lengths.push(bubble.textContent.length);
        }).observe(document.querySelector("#chat-log"),
                   { subtree: true, childList: true, characterData: true });
    }""")
    page.fill("#chat-input", question)
    page.press("#chat-input", "Enter")
    expect(page.locator("#chat-log .bubble.user")).to_have_text(question)
    answer = page.locator("#chat-log .bubble.assistant")
    expect(answer).to_have_count(1)
    expect(page.locator("#chat-log .streaming")).to_have_count(0, timeout=120_000)
    expect(page.locator("#chat-stats")).to_contain_text("tokens/s")
    shot(page, "chat")

    growth = sorted(set(page.evaluate("window.lengths")) - {0})
    assert len(growth) >= 5, f"the answer should appear in many steps, saw lengths {growth}"
    assert answer.text_content() == reference["content"]


def test_embeddings_compare_two_sentences(page: Page, server) -> None:
    play(page, "embed")
    expect(page.locator("#embed-model")).to_have_value("minilm")
    a, b = "The cat sat on the mat", "Stock prices fell sharply"
    page.fill("#embed-a", a)
    page.fill("#embed-b", b)
    page.click("#embed-form button[type=submit]")
    expect(page.locator("#embed-result")).to_be_visible(timeout=60_000)
    vectors = server.post("/v1/embeddings", {"model": "minilm", "input": [a, b]}).json()["data"]
    x, y = (np.array(v["embedding"]) for v in vectors)
    want = float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))
    assert abs(float(page.inner_text("#embed-score")) - want) < 0.001
    expect(page.locator("#embed-meta")).to_contain_text("384 dimensions")


def test_ocr_reads_a_dropped_image(page: Page) -> None:
    play(page, "vision")
    page.select_option("#vision-model", "ocr")
    drop_file(page, "#drop", "words.png", words("HELLO DASHBOARD 42"), "image/png")
    text = page.locator("#vision-result [data-result=text]")
    expect(text).to_contain_text("HELLO", timeout=60_000)
    assert "DASHBOARD" in text.inner_text() and "42" in text.inner_text()
    expect(page.locator("#vision-preview")).to_be_visible()
    shot(page, "ocr")


def test_a_classifier_names_a_chosen_photo(page: Page) -> None:
    play(page, "vision")
    page.select_option("#vision-model", "imagenet")
    page.fill("#vision-top-k", "3")
    page.set_input_files("#vision-file", chelsea())
    labels = page.locator("#vision-result [data-result=labels] .label")
    expect(labels).to_have_count(3, timeout=60_000)
    assert "cat" in labels.first.inner_text()  # tabby cat, tiger cat...
    shot(page, "classify")


def test_logs_follow_a_request_made_by_another_client(page: Page, server) -> None:
    tab(page, "logs")
    page.select_option("#log-model", "minilm")
    rows = page.locator("#log .log-row")
    expect(rows.first).to_be_visible()  # the load events, at least
    marker = "a sentence only this test sends"
    answer = server.post("/v1/embeddings", {"model": "minilm", "input": [marker]})
    assert answer.status_code == 200
    request = page.locator("#log .log-row.request", has_text="/embeddings 200")
    expect(request.last).to_be_visible(timeout=10_000)  # followed: no reload, no click
    shot(page, "logs")

    page.uncheck("#log-controls input[value=request]")
    expect(request.last).to_be_hidden()
    page.check("#log-controls input[value=request]")
    page.fill("#log-filter", "/embeddings 200")
    expect(page.locator("#log .log-row.event").first).to_be_hidden()
    expect(request.last).to_be_visible()

    page.click("#log-clear")
    expect(rows).to_have_count(0)
    expect(page.locator("#notice")).to_contain_text("cleared")
    logs = httpx.get(f"{server.url}/api/v1/minilm/logs", timeout=10).json()
    assert [r for r in logs if r["source"] == "request"] == []


def test_charts_plot_the_traffic(page: Page, server) -> None:
    tab(page, "charts")
    requests = page.locator('[data-chart="Requests per second"] [data-label="minilm"]')
    expect(requests).to_be_visible()
    for _ in range(8):  # over 4 s: a line, not a dot
        assert server.post("/v1/embeddings", {"model": "minilm", "input": ["x"]}).is_success
        time.sleep(0.5)
    page.wait_for_function(
        """() => Number(document.querySelector(
            '[data-chart="Requests per second"] [data-label="minilm"]').dataset.last) > 0""",
        timeout=10_000,
    )
    latency = page.locator('[data-chart^="Latency"] path[data-series="minilm p50"]')
    expect(latency).to_have_count(1)
    shot(page, "charts")


# ---- API keys (fake models) --------------------------------------------------------------------


def enter_key(page: Page, key: str) -> None:
    expect(page.locator("#key-dialog")).to_be_visible()
    page.fill("#key-input", key)
    page.click("#key-form button[type=submit]")


def test_the_page_asks_for_a_key_and_shows_the_401_message(keyed_page: Page, keyed) -> None:
    page = keyed_page
    expect(page.locator("#key-dialog")).to_be_visible()
    expect(page.locator("#key-error")).to_be_hidden()  # nothing tried yet: nothing wrong
    shot(page, "key-prompt")
    wrong = httpx.get(f"{keyed.url}/v1/models", headers={"x-api-key": "wrong"})
    assert wrong.status_code == 401
    enter_key(page, "wrong")
    expect(page.locator("#key-error")).to_have_text(wrong.json()["error"]["message"])
    shot(page, "key-wrong")

    enter_key(page, ADMIN)
    expect(page.locator("#key-dialog")).to_be_hidden()
    expect(state_of(page, "echo")).to_have_text("ready")
    expect(row(page, "echo").locator("[data-action=unload]")).to_be_visible()
    tab(page, "logs")  # the followed log stream carries the key too
    expect(page.locator("#log .log-row.event").first).to_be_visible()
    tab(page, "models")
    page.reload()  # the key is kept for the tab's session: no second prompt
    expect(row(page, "echo").locator("[data-action=unload]")).to_be_visible()
    expect(page.locator("#key-dialog")).to_be_hidden()


def test_an_inference_key_gets_the_playground_and_no_admin_buttons(keyed_page: Page) -> None:
    page = keyed_page
    enter_key(page, INFERENCE)
    expect(state_of(page, "echo")).to_have_text("ready")  # from /v1/models
    expect(page.locator("#models-hint")).to_be_visible()
    expect(page.locator("[data-action]")).to_have_count(0)
    expect(page.locator('#tabs button[data-tab="logs"]')).to_be_hidden()
    expect(page.locator('#tabs button[data-tab="charts"]')).to_be_hidden()
    shot(page, "inference-key")
    play(page, "chat")
    page.fill("#chat-input", "hello there")
    page.click("#chat-send")
    expect(page.locator("#chat-log .bubble.assistant")).to_have_text("You said: hello there")


def test_replica_buttons_and_the_api_errors_they_show(keyed_page: Page, keyed) -> None:
    page = keyed_page
    enter_key(page, ADMIN)
    echo = row(page, "echo")
    expect(echo.locator(".replica")).to_have_count(1)
    bad = keyed.post("/api/v1/echo/add", {"device": "tpu:0"})
    assert bad.status_code == 400
    echo.locator("[data-field=device]").fill("tpu:0")
    echo.locator("[data-action=add]").click()
    expect(page.locator("#notice")).to_contain_text(bad.json()["error"]["message"])

    echo.locator("[data-field=device]").fill("cpu")
    echo.locator("[data-action=add]").click()
    expect(echo.locator(".replica")).to_have_count(2, timeout=30_000)
    assert len(keyed.model("echo")["replicas"]) == 2
    echo.locator("[data-action=remove]").click()
    expect(echo.locator(".replica")).to_have_count(1, timeout=30_000)


def test_the_charts_quantiles_match_prometheus(keyed_page: Page) -> None:
    """histogram_quantile's interpolation, computed by the page's own module in the browser."""
    got = keyed_page.evaluate("""async () => {
        const { quantile } = await import("./ui/metrics.js");
        const now = new Map([[0.1, 10], [0.5, 20], [1, 20], [Infinity, 21]]);
        const before = new Map([[0.1, 0], [0.5, 0], [1, 0], [Infinity, 1]]);
        const slow = new Map([[0.1, 0], [1, 0], [Infinity, 5]]);
        return [quantile(0.5, now, before), quantile(0.99, now, before),
                quantile(0.5, before, before), quantile(0.5, slow, null)];
    }""")
    # p50: 10 of 20 requests fall under 0.1 s; p99: 9.8 of the 10 in (0.1, 0.5]; no requests:
    # no value; all beyond the largest bucket: that bucket's bound, as Prometheus answers.
    assert got[:2] == pytest.approx([0.1, 0.492]) and got[2:] == [None, 1]
