"""The code generation page in headless Chromium (Debian's), against a real server and model."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sluicegate.config import Route, Settings
from sluicegate.events import ChatRequest, TextDelta
from sluicegate.gateway import Gateway
from sluicegate.generation import Generation
from sluicegate.providers.scripted import ScriptedProvider
from tests.conftest import Server, serve, stop, wait_until

playwright = pytest.importorskip("playwright.sync_api")
CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    not shutil.which(CHROMIUM), reason="needs Debian's chromium (make test installs it)"
)
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
Page = Any


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, server: Server) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1100, "height": 800})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    open_page(pg, server.url)
    yield pg
    context.close()
    assert not errors, errors  # no script errors and no CSP violations


def open_page(pg: Page, url: str) -> None:
    pg.goto(url + "/")
    pg.wait_for_selector("#link[data-state=ok]")


def ask(pg: Page, prompt: str, model: str | None = None) -> None:
    if model:
        pg.select_option("#model", model)
    pg.fill("#prompt", prompt)
    pg.press("#prompt", "Control+Enter")


def last_turn(pg: Page) -> dict[str, Any]:
    turn: dict[str, Any] = pg.evaluate("sluicegate.state.turns.at(-1)")
    return turn


def wait_tokens(pg: Page, n: int) -> None:
    pg.wait_for_function(f"() => sluicegate.state.turns.at(-1).seq >= {n}", timeout=60_000)


def wait_ended(pg: Page) -> dict[str, Any]:
    ended = "() => sluicegate.state.turns.at(-1).status !== 'streaming'"
    pg.wait_for_function(ended, timeout=90_000)
    return last_turn(pg)


def generation(server: Server, pg: Page, client_id: str) -> Generation:
    owner = pg.evaluate("sluicegate.state.owner")
    gen: Generation = server.app.state.websocket.live[(owner, client_id)].gen
    return gen


def server_text(gen: Generation) -> str:
    return "".join(e.text for e in gen.log if isinstance(e, TextDelta))


def test_answer_grows_over_many_updates_and_ends_with_figures(page: Page, server: Server) -> None:
    page.click("#settings-open")
    page.fill("#max-tokens", "80")
    page.click("#settings button.primary")
    # Record the answer's length at every DOM change (one callback per painted frame).
    page.evaluate(
        """() => { window.sizes = [];
            new MutationObserver(() => {
                const a = document.querySelector('.turn.assistant .answer');
                if (a) window.sizes.push(a.textContent.length);
            }).observe(document.querySelector('#turns'),
                       { subtree: true, childList: true, characterData: true }); }"""
    )
    ask(page, "Write a Python function that reverses a list, with an example.")
    turn = wait_ended(page)
    sizes = page.evaluate("window.sizes")
    grew = sorted(set(sizes))
    assert len(grew) >= 4, f"the answer changed only {len(grew)} times while streaming"
    assert sizes == sorted(sizes), "the answer shrank while streaming"
    gen = generation(server, page, turn["id"])
    assert turn["text"] == server_text(gen)  # every delta, in order, once
    assert turn["usage"]["output_tokens"] == gen.usage.output_tokens <= 80
    figures = page.inner_text(".turn.assistant .figures")
    for shown in ("first token", "tok/s", f"{gen.usage.input_tokens} in", "out", "total", "stop:"):
        assert shown in figures, figures
    assert page.is_visible("#send") and not page.is_visible("#stop")
    # The timeline bar: the wait for the first token, to scale against the whole answer.
    share = page.evaluate(
        """() => { const t = document.querySelector('.turn.assistant .timeline');
                   const width = (e) => e.getBoundingClientRect().width;
                   return width(t.firstChild) / width(t); }"""
    )
    m = turn["metrics"]
    assert abs(share - max(0.01, m["ttft_ms"] / m["duration_ms"])) < 0.02
    label = page.get_attribute(".turn.assistant .timeline", "aria-label") or ""
    assert label.startswith("first token after ")


def stop_a_model_answer(page: Page) -> dict[str, Any]:
    """Press Stop while the model writes. The model may end an answer before the click (its
    answers are sampled; once here one ended between the fifth token and the click), so a turn
    that ended by itself is asked again, at most three times: a Stop that never works fails."""
    # At the fifth token (or the end), the buttons as shown in that same moment.
    begun = """() => { const t = sluicegate.state.turns.at(-1);
        const shown = (id) => document.getElementById(id).checkVisibility();
        if (t.status !== 'streaming') return { ended: true };
        return t.seq >= 5 && { stop: shown('stop'), send: shown('send') }; }"""
    for _ in range(3):
        ask(page, "Write a very long Python module with many functions and docstrings.")
        buttons = page.wait_for_function(begun, timeout=60_000).json_value()
        if not buttons.get("ended"):
            assert buttons == {"stop": True, "send": False}  # Stop in place of Send
        with contextlib.suppress(playwright.TimeoutError):  # not visible: it had ended
            page.get_by_role("button", name="Stop").click(timeout=5_000)
        turn = wait_ended(page)
        if turn["status"] != "done":
            return turn
    pytest.fail("the model ended three answers by itself before Stop could be pressed")


def test_stop_button_stops_the_model(page: Page, server: Server) -> None:
    turn = stop_a_model_answer(page)
    assert turn["status"] == "stopped" and turn["stopReason"] == "cancelled"
    # The last answer's badge: an earlier answer may have ended by itself (see above).
    assert "Stopped" in page.locator(".turn.assistant .badge").last.inner_text()
    assert page.is_visible("#send") and not page.is_visible("#stop")

    gen = generation(server, page, turn["id"])
    assert gen.stop_reason == "cancelled"
    engine = server.gateway.providers["local"].engine  # type: ignore[attr-defined]
    assert wait_until(lambda: engine.active() == (0, 0))
    decoded = engine.decoded(gen.id)
    time.sleep(0.3)
    assert engine.decoded(gen.id) == decoded, "the model kept decoding after Stop"
    assert turn["text"] == server_text(gen)  # the partial answer stays, complete
    assert turn["text"] and turn["usage"]["output_tokens"] == gen.usage.output_tokens


def test_escape_stops_too(page: Page, server: Server) -> None:
    ask(page, "sluicegate:delay-ms=40 go", model="scripted")
    wait_tokens(page, 3)
    page.keyboard.press("Escape")
    turn = wait_ended(page)
    assert turn["stopReason"] == "cancelled"
    produced = server.gateway.providers["scripted"].produced  # type: ignore[attr-defined]
    gen = generation(server, page, turn["id"])
    assert produced[gen.id] < 64


def test_conversation_is_multi_turn_and_survives_reload(page: Page, server: Server) -> None:
    ask(page, "first question", model="scripted")
    first = wait_ended(page)
    ask(page, "second question")
    second = wait_ended(page)
    gen = generation(server, page, second["id"])
    assert gen.roles == ("user", "assistant", "user")
    # the first answer went back with the second question (the scripted provider counts words)
    sent = "first question " + first["text"] + " second question"
    assert gen.usage.input_tokens == len(sent.split())

    page.reload()
    page.wait_for_selector("#link[data-state=ok]")
    answers = page.locator(".turn.assistant .answer")
    assert answers.count() == 2
    assert "second question" in page.inner_text("#turns")
    assert answers.nth(1).inner_text().split() == second["text"].split()
    assert page.input_value("#model") == "scripted"

    page.click("#new-chat")
    page.reload()
    page.wait_for_selector("#link[data-state=ok]")
    assert page.locator(".turn").count() == 0


def test_temperature_is_the_model_default_unless_set(page: Page, server: Server) -> None:
    assert page.input_value("#temperature") == ""
    ask(page, "first", model="scripted")
    unset = generation(server, page, wait_ended(page)["id"])
    page.click("#settings-open")
    page.fill("#temperature", "1")
    page.click("#settings button.primary")
    ask(page, "second")
    given = generation(server, page, wait_ended(page)["id"])
    assert (unset.request.temperature, given.request.temperature) == (None, 1.0)
    page.reload()
    page.wait_for_selector("#link[data-state=ok]")
    assert page.input_value("#temperature") == "1"  # kept, like the other settings


def test_dropped_socket_resumes_with_no_gap_and_no_repeat(page: Page, server: Server) -> None:
    ask(page, "sluicegate:delay-ms=40 tell me everything", model="scripted")
    wait_tokens(page, 5)
    owner = page.evaluate("sluicegate.state.owner")
    ids = [c.id for c in server.app.state.connections.by_id.values() if c.owner == owner]
    assert len(ids) == 1
    server.management().delete_connection(ConnectionId=ids[0])  # the server drops the socket
    turn = wait_ended(page)
    gen = generation(server, page, turn["id"])
    assert turn["status"] == "done" and turn["text"] == server_text(gen)
    assert turn["seq"] == sum(isinstance(e, TextDelta) for e in gen.log)
    assert server.app.state.connections.opened >= 2  # it really reconnected


def test_reload_mid_answer_resumes_it(page: Page, server: Server) -> None:
    ask(page, "sluicegate:delay-ms=40 keep going", model="scripted")
    wait_tokens(page, 5)
    # Saved while it streams, not only when the page goes away (a crash keeps it too).
    saved = "JSON.parse(localStorage.getItem('sluicegate.chat.v1') || '{}')"
    stored = f"() => ({saved}.turns?.at(-1)?.seq ?? 0) >= 3"
    page.wait_for_function(stored, timeout=5_000)
    assert last_turn(page)["status"] == "streaming"
    page.reload()
    page.wait_for_selector("#link[data-state=ok]")
    turn = wait_ended(page)
    gen = generation(server, page, turn["id"])
    assert turn["status"] == "done" and turn["text"] == server_text(gen)
    assert page.inner_text(".turn.assistant .answer").split() == turn["text"].split()


def test_validation_error_is_shown_in_plain_words(page: Page) -> None:
    page.click("#settings-open")
    page.fill("#max-tokens", "1000000")
    page.click("#settings button.primary")
    ask(page, "hello")
    turn = wait_ended(page)
    assert turn["status"] == "error"
    shown = page.inner_text(".turn.assistant .error")
    assert shown.startswith("The server did not accept the request:")
    assert "context" in shown  # the server's own explanation
    assert page.is_visible("#send") and not page.is_visible("#stop")


def test_markdown_streams_without_rebuilding_finished_blocks(page: Page) -> None:
    text = (
        "# Title\n\nSome **bold** and `code` and a [link](https://example.com).\n\n"
        "- one\n- two\n\n```python\ndef f(x):\n    return x * 2\n```\n\n"
        "<img src=x onerror=alert(1)> stays text.\n"
    )
    result = page.evaluate(
        """async (text) => {
            const { MarkdownStream } = await import('/ui/markdown.js');
            const whole = document.createElement('div');
            new MarkdownStream(whole).push(text);
            const bits = document.createElement('div');
            const md = new MarkdownStream(bits);
            let firstPara = null, kept = true;
            for (let i = 0; i < text.length; i += 3) {
                md.push(text.slice(i, i + 3));
                const p = bits.querySelector('p');
                if (p && !firstPara && bits.children.length > 2) firstPara = p;
                if (firstPara && !bits.contains(firstPara)) kept = false;
            }
            return { same: whole.innerHTML === bits.innerHTML, kept, html: bits.innerHTML,
                     imgs: bits.querySelectorAll('img').length,
                     code: bits.querySelector('figure.code code').textContent,
                     lang: bits.querySelector('figure.code .lang').textContent };
        }""",
        text,
    )
    assert result["same"], result["html"]
    assert result["kept"], "a finished paragraph was rebuilt while later text streamed in"
    assert result["imgs"] == 0 and "&lt;img" in result["html"]
    assert result["code"] == "def f(x):\n    return x * 2\n" and result["lang"] == "python"
    for tag in ("<h3>", "<strong>bold</strong>", "<ul>", 'href="https://example.com"'):
        assert tag in result["html"]


def test_code_block_copy_button(page: Page, browser: Any) -> None:
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.evaluate(
        """async () => {
            const { MarkdownStream } = await import('/ui/markdown.js');
            const root = document.querySelector('#turns');
            new MarkdownStream(root, { onCopy: (t, b) => navigator.clipboard.writeText(t)
                .then(() => { b.textContent = 'Copied'; }) }).push('```sh\\nls -la\\n```\\n');
        }"""
    )
    page.click("figure.code .copy")
    page.wait_for_selector("figure.code .copy:text('Copied')")
    assert page.evaluate("navigator.clipboard.readText()") == "ls -la\n"


def test_phone_width_and_dark_mode(browser: Any, server: Server) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, color_scheme="dark")
    pg = context.new_page()
    open_page(pg, server.url)
    ask(pg, "sluicegate:delay-ms=1 " + "x" * 300, model="scripted")
    wait_ended(pg)
    overflow = pg.evaluate("document.scrollingElement.scrollWidth - innerWidth")
    background = pg.evaluate("getComputedStyle(document.body).backgroundColor")
    context.close()
    assert overflow <= 0, "the page scrolls sideways at phone width"
    r, g, b = (int(c) for c in background[background.index("(") + 1 : -1].split(",")[:3])
    assert r + g + b < 150, f"dark mode background is {background}"


@contextlib.contextmanager
def lone_server(
    match: str,
    port: int | None = None,
    api_key: str | None = None,
    provider: ScriptedProvider | None = None,
) -> Iterator[Server]:
    """A server of its own (scripted provider for `match`), for tests that break or stop it."""
    settings = Settings(routes=[Route(match=match, provider="scripted")], api_key=api_key)
    scripted = provider or ScriptedProvider(delay=0.001)
    lone = serve(Gateway(settings, {"scripted": scripted}), port=port)
    try:
        yield lone
    finally:
        stop(lone)


def test_server_down_is_said_in_plain_words(browser: Any) -> None:
    context = browser.new_context()
    pg = context.new_page()
    with lone_server("*") as lone:
        open_page(pg, lone.url)
        assert pg.input_value("#model") == "scripted"
    pg.wait_for_selector("#notice:not([hidden])", timeout=20_000)
    notice = pg.inner_text("#notice")
    ask(pg, "anyone there?")
    state = pg.inner_text("#link")
    context.close()
    assert "Cannot reach the sluicegate server" in notice
    assert state == "reconnecting…" or state == "connecting…"


def test_screenshot_mid_answer(page: Page, tmp_path: Path) -> None:
    """`make screenshot` keeps this picture as docs/screenshot.png."""
    page.set_viewport_size({"width": 1100, "height": 760})
    page.click("#settings-open")
    page.fill("#max-tokens", "400")
    page.fill("#temperature", "0")
    page.click("#settings button.primary")
    ask(page, "Write a Python function that checks whether a string is a palindrome.")
    wait_ended(page)
    ask(page, "Now write tests for it with pytest.")
    wait_tokens(page, 60)
    target = Path(os.environ.get("SG_SCREENSHOT", tmp_path / "screenshot.png"))
    page.screenshot(path=str(target))
    with contextlib.suppress(playwright.TimeoutError):  # (the answer may have ended by now)
        page.get_by_role("button", name="Stop").click(timeout=5_000)
    wait_ended(page)
    assert target.stat().st_size > 10_000


def test_view_follows_the_answer_unless_the_reader_scrolled_up(page: Page) -> None:
    page.set_viewport_size({"width": 800, "height": 400})
    ask(page, "sluicegate:delay-ms=25 " + "long " * 40, model="scripted")
    at_bottom = "() => { const e = document.scrollingElement;"
    at_bottom += " return e.scrollHeight - e.scrollTop - e.clientHeight < 64; }"
    page.wait_for_function("() => document.scrollingElement.scrollTop > 0", timeout=30_000)
    assert page.evaluate(at_bottom)  # following the growing answer
    page.mouse.wheel(0, -5000)  # the reader scrolls up to read
    page.wait_for_function("() => document.scrollingElement.scrollTop === 0")
    height = page.evaluate("document.scrollingElement.scrollHeight")
    page.wait_for_function(f"() => document.scrollingElement.scrollHeight > {height} + 40")
    assert page.evaluate("document.scrollingElement.scrollTop") == 0  # left where they were
    wait_ended(page)


def test_unknown_model_is_said_in_plain_words(browser: Any) -> None:
    context = browser.new_context()
    pg = context.new_page()
    with lone_server("scripted*") as lone:
        open_page(pg, lone.url)
        pg.evaluate(
            """() => { const o = new Option('no-such-model', 'no-such-model');
                       document.querySelector('#model').append(o); o.selected = true; }"""
        )
        ask(pg, "hello")
        turn = wait_ended(pg)
        shown = pg.inner_text(".turn.assistant .error")
    context.close()
    assert turn["status"] == "error"
    assert shown.startswith("That model is not available:") and "no-such-model" in shown


def test_an_answer_lost_in_a_server_restart_is_marked_interrupted(browser: Any) -> None:
    context = browser.new_context()
    pg = context.new_page()
    with lone_server("*") as first:
        open_page(pg, first.url)
        ask(pg, "sluicegate:delay-ms=50 long answer")
        wait_tokens(pg, 5)
        port = int(first.url.rsplit(":", 1)[1])
    with lone_server("*", port=port):  # restarted: it never heard of that generation
        turn = wait_ended(pg)
        shown = pg.inner_text(".turn.assistant .error")
        badge = pg.inner_text(".turn.assistant .badge")
        pg.wait_for_selector("#link[data-state=ok]")  # reconnected to the new server
        turns = pg.evaluate("sluicegate.state.turns.length")
        ask(pg, "still there?")
        pg.wait_for_function(f"() => sluicegate.state.turns.length > {turns}")
        after = wait_ended(pg)
    context.close()
    assert turn["status"] == "interrupted" and turn["seq"] >= 5 and turn["text"]
    # The server drained on its way down: it said it shut down before the answer finished.
    assert badge == "Interrupted" and "shut down before this generation finished" in shown
    assert after["status"] == "done" and after["text"].startswith("You said: still there?")


def test_stop_pressed_while_disconnected_is_sent_after_the_reconnect(
    page: Page, server: Server
) -> None:
    ask(page, "sluicegate:delay-ms=60 a long one", model="scripted")
    wait_tokens(page, 3)
    owner = page.evaluate("sluicegate.state.owner")
    [conn] = [c.id for c in server.app.state.connections.by_id.values() if c.owner == owner]
    # Reconnects go nowhere for now (as when the network is down), then the server drops us.
    page.evaluate(
        "() => { window.url = sluicegate.link.url; sluicegate.link.url = 'ws://127.0.0.1:9/ws'; }"
    )
    server.management().delete_connection(ConnectionId=conn)
    page.wait_for_selector("#link:not([data-state=ok])")
    page.get_by_role("button", name="Stop").click()
    assert "Stopping" in page.inner_text(".turn.assistant .badge")
    page.evaluate("() => { sluicegate.link.url = window.url; }")
    turn = wait_ended(page)
    gen = generation(server, page, turn["id"])
    assert turn["status"] == "stopped" and gen.stop_reason == "cancelled"
    assert turn["text"] == server_text(gen) and turn["seq"] < 64


def test_inline_markup_never_makes_the_answer_shrink(page: Page, server: Server) -> None:
    """An inline marker that is not closed yet is held back while the block is open (shown,
    it would vanish when it closes); at the end every character is there."""
    page.evaluate(
        """() => { window.sizes = [];
            new MutationObserver(() => {
                const a = document.querySelector('.turn.assistant .answer');
                if (a) window.sizes.push(a.textContent.length);
            }).observe(document.querySelector('#turns'),
                       { subtree: true, childList: true, characterData: true }); }"""
    )
    # constructs that span words, closed by a piece that adds fewer characters than the
    # markers it removes (as a model's one-token "**" does)
    words = "use `rev of xs ` then **very bold ** *so em* _it is_ [the docs](http://x.y) 2*3"
    ask(page, "sluicegate:delay-ms=15 " + words, model="scripted")
    turn = wait_ended(page)
    sizes = page.evaluate("window.sizes")
    assert len(set(sizes)) >= 4 and sizes == sorted(sizes), "the answer shrank while streaming"
    answer = page.locator(".turn.assistant .answer").last
    assert answer.locator("code").first.inner_text().strip() == "rev of xs"
    assert answer.locator("strong").first.inner_text().strip() == "very bold"
    assert "2*3" in answer.inner_text()  # never closed: shown as it is at the end
    assert turn["status"] == "done"


def test_a_server_with_an_api_key_is_used_through_a_token_link(browser: Any) -> None:
    context = browser.new_context()
    pg = context.new_page()
    with lone_server("*", api_key="page-key") as keyed:
        pg.goto(keyed.url + "/#token=page-key")
        pg.wait_for_selector("#link[data-state=ok]")
        assert "page-key" not in pg.url  # out of the address bar (and of the history)
        ask(pg, "hello")
        served = wait_ended(pg)
        pg.reload()  # the token stays with the tab
        pg.wait_for_selector("#link[data-state=ok]")
        ask(pg, "again")
        again = wait_ended(pg)
        other = context.new_page()  # a tab opened without the link has no key
        other.goto(keyed.url + "/")
        other.wait_for_selector("#link[data-state=ok]")
        ask(other, "hello")
        refused = wait_ended(other)
    context.close()
    assert served["status"] == "done" and again["status"] == "done"
    assert again["text"].startswith("You said: again")
    assert refused["status"] == "error"


# ---- code that reads like code: syntax colours as it streams ----------------------------------

SMALL = (
    "Here it is:\n\n```python\n"
    "def greet(name: str) -> str:\n"
    '    """Say hello."""\n'
    "    return f\"Hello, {name} <&> 'you'\"  # a comment\n"
    '```\n\nAnd to run it:\n\n```sh\necho "$HOME" && ls -la\n```\n\n'
    "```dockerfile\nFROM python:3.12-slim\nRUN pip install sluicegate\n```\n\n"
    "```zzz\nno such language: <plain> & 'as is'\n```\n\nDone.\n"
)
FENCED = re.compile(r"^```(\w+)\n(.*?)^```\n", re.DOTALL | re.MULTILINE)


def python_lines(n: int, seed: int) -> list[str]:
    """n lines of Python: functions with docstrings over lines, comments, strings, numbers."""
    unit = [
        "def step_{s}_{i}(items: list[int], limit: int = {i}) -> str:",
        '    """Keep what is under the limit.',
        "",
        "    Over lines, <b> & 'quotes' stay text.",
        '    """',
        "    kept = [x for x in items if x < limit]  # {i} & <i>",
        '    return f"{{len(kept)}} kept of {i}"',
        "",
    ]
    return [unit[j % 8].format(s=seed, i=j // 8) for j in range(n)]


def js_lines(n: int, seed: int) -> list[str]:
    unit = ["function f{s}_{i}(a, b) {{", "  // add them, <tags> & all", "  return a + b * {i};"]
    unit += ["}}", ""]
    return [unit[j % 5].format(s=seed, i=j // 5) for j in range(n)]


def big_answer(lines: int = 2000) -> str:
    """Markdown of `lines` lines: prose, headings and 13 code blocks, the last and longest of
    them still open for most of the stream."""
    head, body, tail = ["Here is the whole program, in parts.", ""], [], ["That is all of it."]
    for k in range(12):
        lang, code = ("python", python_lines(64, k)) if k % 3 else ("javascript", js_lines(40, k))
        body += [f"## Part {k}", "", f"Part {k} does **this**, see `step_{k}_0`.", ""]
        body += [f"```{lang}", *code, "```", ""]
    rest = lines - len(head) - len(body) - len(tail) - 3
    body += ["```python", *python_lines(rest, 99), "```", ""]
    return "\n".join(head + body + tail) + "\n"


BIG = big_answer()


class CodeProvider(ScriptedProvider):
    """Answers with the Markdown named by the prompt's last word (SMALL or BIG), a line or
    half of one per token, so that lines also arrive in pieces."""

    def words(self, request: ChatRequest) -> list[str]:
        text = {"small": SMALL, "big": BIG}[request.messages[-1].text.split()[-1]]
        halves = [(t[: len(t) // 2], t[len(t) // 2 :]) for t in text.splitlines(keepends=True)]
        return [piece for pair in halves for piece in pair if piece]


@pytest.fixture(scope="module")
def code_server() -> Iterator[Server]:
    with lone_server("*", provider=CodeProvider(delay=0.001)) as served:
        yield served


@pytest.fixture
def code_page(browser: Any, code_server: Server) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1100, "height": 800})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    # Before any of the page's own scripts: every CSP violation is kept.
    pg.add_init_script(
        """window.violations = [];
           addEventListener('securitypolicyviolation',
               (e) => window.violations.push(e.violatedDirective + ' ' + e.blockedURI));"""
    )
    open_page(pg, code_server.url)
    yield pg
    violations = pg.evaluate("window.violations")
    context.close()
    assert not errors, errors
    assert violations == [], violations


def code_blocks(pg: Page) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = pg.evaluate(
        """() => [...document.querySelectorAll('.turn.assistant .answer figure.code')].map((f) => {
            const code = f.querySelector('code');
            return { lang: f.querySelector('.lang').textContent, text: code.textContent,
                     tokens: code.querySelectorAll('[class^="hljs-"]').length,
                     others: [...code.querySelectorAll('*')].filter((e) => e.tagName !== 'SPAN')
                                 .length }; })"""
    )
    return blocks


def test_code_is_coloured_and_copies_as_plain_text(code_page: Page) -> None:
    pg = code_page
    pg.context.grant_permissions(["clipboard-read", "clipboard-write"])
    ask(pg, "small")
    assert wait_ended(pg)["text"] == SMALL
    blocks = code_blocks(pg)
    assert [(b["lang"], b["text"]) for b in blocks] == FENCED.findall(SMALL)
    assert [b["tokens"] > 0 for b in blocks] == [True, True, True, False], blocks  # zzz: plain
    assert all(b["others"] == 0 for b in blocks), blocks  # spans and text, nothing else
    python = pg.locator(".turn.assistant figure.code").first
    keywords = python.locator(".hljs-keyword").all_inner_texts()
    assert "def" in keywords and "return" in keywords
    assert python.locator(".hljs-comment").inner_text() == "# a comment"
    assert python.locator(".hljs-title").first.inner_text() == "greet"
    strings = python.locator(".hljs-string").all_inner_texts()
    assert '"""Say hello."""' in strings and any("<&>" in s for s in strings)

    python.locator(".copy").click()
    pg.wait_for_selector(".turn.assistant figure.code .copy:text('Copied')")
    assert pg.evaluate("navigator.clipboard.readText()") == FENCED.findall(SMALL)[0][1]

    # Our own theme, in light and dark: keywords stand out from the code around them.
    colour = """() => { const f = document.querySelector('.turn.assistant figure.code');
        const c = (s) => getComputedStyle(f.querySelector(s)).color;
        return [c('code'), c('.hljs-keyword'), c('.hljs-string'), c('.hljs-comment')]; }"""
    light = pg.evaluate(colour)
    pg.emulate_media(color_scheme="dark")
    dark = pg.evaluate(colour)
    assert len(set(light)) == 4 and len(set(dark)) == 4, (light, dark)
    assert not set(light) & set(dark), (light, dark)


def test_the_policy_stays_strict_with_the_highlighter(code_page: Page, code_server: Server) -> None:
    for path in ("/", "/ui/syntax.js", "/ui/vendor/highlight.min.js"):
        response = httpx.get(code_server.url + path)
        assert response.status_code == 200, path
        policy = dict(
            d.strip().split(" ", 1) for d in response.headers["content-security-policy"].split(";")
        )
        assert policy["script-src"] == "'self'" and policy["style-src"] == "'self'", policy
        assert "unsafe" not in response.headers["content-security-policy"]
    vendored = httpx.get(code_server.url + "/ui/vendor/highlight.min.js")
    assert "javascript" in vendored.headers["content-type"]
    assert "Highlight.js v11.12.0" in vendored.text[:200]
    ask(code_page, "small")
    wait_ended(code_page)
    assert code_page.locator(".turn.assistant .hljs-keyword").count() > 0
    # the fixture then asserts that no securitypolicyviolation event came


# Watches the answer: a finished block (one with a block after it) must never change again,
# and the open code block's text and colours only grow. Plus a frame heartbeat.
WATCH = """() => {
    const w = window.watch = { rebuilds: 0, records: 0, shrank: [], frames: 0, maxGap: 0 };
    const finished = new WeakSet();
    const blockOf = (n) => {
        while (n && !n.parentNode?.classList?.contains('answer')) n = n.parentNode;
        return n;
    };
    let seen = null;
    new MutationObserver((records) => {
        for (const r of records) {  // in order: what was finished when each change was made
            w.records += 1;
            if (r.target.classList?.contains('answer')) {
                for (const n of r.removedNodes) if (finished.has(n)) w.rebuilds += 1;
                if (r.addedNodes.length && r.previousSibling) finished.add(r.previousSibling);
            } else if (finished.has(blockOf(r.target))) {
                w.rebuilds += 1;
            }
        }
        const open = document.querySelector('.turn.assistant:last-child .answer > :last-child');
        if (open?.matches('figure.code')) {
            const code = open.querySelector('code');
            const now = { open, text: code.textContent.length,
                          tokens: code.querySelectorAll('[class^="hljs-"]').length };
            if (seen?.open === open && (now.text < seen.text || now.tokens < seen.tokens)) {
                w.shrank.push([seen.text, seen.tokens, now.text, now.tokens]);
            }
            seen = now;
        }
    }).observe(document.querySelector('#turns'),
               { subtree: true, childList: true, characterData: true, attributes: true });
    let last = performance.now();
    const beat = (t) => {
        w.maxGap = Math.max(w.maxGap, t - last);
        last = t;
        w.frames += 1;
        if (!w.stopped) requestAnimationFrame(beat);
    };
    requestAnimationFrame(beat);
}"""

STATS = "async () => ({ ...(await import('/ui/syntax.js')).stats })"


def test_a_2000_line_answer_keeps_the_page_responsive(code_page: Page) -> None:
    pg = code_page
    assert BIG.count("\n") == 2000
    expected = FENCED.findall(BIG)
    pg.click("#settings-open")
    pg.fill("#max-tokens", "10000")
    pg.click("#settings button.primary")
    pg.evaluate(WATCH)
    started = time.monotonic()
    ask(pg, "sluicegate:delay-ms=1 big")
    # The long last block is coloured while it is still open (and still arriving).
    open_and_coloured = """() => { const t = sluicegate.state.turns.at(-1);
        const code = document.querySelector('.turn.assistant:last-child figure:last-child code');
        if (!(t.status === 'streaming' && code?.textContent.startsWith('def step_99_0')
              && code.textContent.length > 20000 && code.querySelector('.hljs-keyword'))) return;
        const row = parseFloat(getComputedStyle(code).lineHeight);
        const rows = code.getBoundingClientRect().height / row;
        return { lines: code.textContent.replace(/\\n$/, '').split('\\n').length, rows }; }"""
    shown = pg.wait_for_function(open_and_coloured, timeout=90_000).json_value()
    assert abs(shown["rows"] - shown["lines"]) < 0.5, shown  # as many rows as lines, no gaps
    turn = wait_ended(pg)
    took = time.monotonic() - started
    watch = pg.evaluate("() => { watch.stopped = true; return { ...watch }; }")
    stats = pg.evaluate(STATS)
    blocks = code_blocks(pg)

    assert turn["text"] == BIG
    assert [(b["lang"], b["text"]) for b in blocks] == expected
    assert all(b["tokens"] > 0 for b in blocks)
    assert watch["rebuilds"] == 0, watch  # no finished block was ever touched again
    assert watch["records"] > 1000  # ...while the open blocks changed all along
    assert watch["shrank"] == [], watch["shrank"]  # no flicker: text and colours only grew
    assert stats["finished"] == len(expected)  # each block coloured once, as it closed
    assert 0 < stats["open"] <= watch["frames"]  # the open one at most once a frame
    # ...each pass over its new lines and what is still unsettled in it (since the last point
    # outside every string, comment and bracket: measured 212-311 characters a pass on
    # average, by where the passes fall), and each block once more as it closes. Colouring
    # the whole open block on each pass would be some 18,000 characters a pass, on average.
    code = sum(len(text) for _, text in expected)
    assert (stats["chars"] - 2 * code) / stats["open"] < 1000, (stats, code)
    same = """async (text) => { const { MarkdownStream } = await import('/ui/markdown.js');
        const whole = document.createElement('div');
        new MarkdownStream(whole).push(text);
        return whole.innerHTML === document.querySelector('.turn.assistant .answer').innerHTML; }"""
    assert pg.evaluate(same, BIG)  # streamed, it ends exactly as if it had come at once
    print(
        f"\n2,000 lines ({len(BIG):,} chars, {len(expected)} code blocks) in {took:.1f} s;"
        f" {watch['frames']} frames, longest gap {watch['maxGap']:.0f} ms;"
        f" colouring: {stats['open']} passes over the open block, {stats['ms']:.0f} ms in all,"
        f" longest {stats['maxMs']:.1f} ms, {stats['chars'] / code:.2f} characters per one of code"
    )
    # The counts above are the proof; this only catches a page that froze (generous: the
    # machine is shared, and a frame there can wait for a core).
    assert watch["maxGap"] < 2000, watch

    # The detector above does see a change to a finished block.
    pg.evaluate("() => document.querySelector('.turn.assistant figure.code code').append('x')")
    assert pg.evaluate("() => new Promise((r) => setTimeout(() => r(watch.rebuilds)))") == 1

    # Shown again after a reload: all of it coloured at once, each block once.
    pg.reload()
    pg.wait_for_selector("#link[data-state=ok]")
    again = pg.evaluate(STATS)
    assert [(b["lang"], b["text"]) for b in code_blocks(pg)] == expected
    assert (again["finished"], again["open"]) == (len(expected), 0)
    print(f"reload: {len(expected)} blocks coloured in {again['ms']:.0f} ms")
