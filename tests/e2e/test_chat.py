"""`sluicegate chat` as a person runs it: the real command under a pseudo-terminal (pexpect),
keys for Ctrl-C and Ctrl-D, against a real server; what the server recorded is read back from
`/sluicegate/generations/{id}`, whose id the figures line under each answer names."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pexpect
import pyte
import pytest

from sluicegate.chat import AnthropicDoor, BedrockDoor, Ended, Sent, open_door
from sluicegate.config import Route, Settings
from sluicegate.events import ChatRequest, Message
from sluicegate.gateway import Gateway
from sluicegate.providers.scripted import ScriptedProvider
from tests.conftest import Server, serve, stop, wait_until

LENGTH = 30  # scripted words per answer
LONG = 300  # words in a long one
KEY = "chat-key-for-tests"
# first token ms, output tokens (unknown after a disconnect), tokens/s (after the first), stop
# reason, the generation's id
FIGURES = re.compile(
    r"first token (\d+) ms(?: · (\d+) tokens)?(?: · ([\d.]+) tok/s)? · (\w+) · ([\w-]+)"
)
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
PROMPT = "\x1b[1;32m>\x1b[0m "  # as drawn: readline holds the terminal from then on


@pytest.fixture(scope="module")
def scripted() -> Iterator[Server]:
    settings = Settings(routes=[Route(match="*", provider="scripted")])
    s = serve(Gateway(settings, {"scripted": ScriptedProvider(delay=0.005, length=LENGTH)}))
    yield s
    stop(s)


@pytest.fixture(scope="module")
def long() -> Iterator[Server]:
    settings = Settings(routes=[Route(match="*", provider="scripted")])
    s = serve(Gateway(settings, {"scripted": ScriptedProvider(delay=0.002, length=LONG)}))
    yield s
    stop(s)


@pytest.fixture(scope="module")
def keyed() -> Iterator[Server]:
    settings = Settings(routes=[Route(match="*", provider="scripted")], api_key=KEY)
    s = serve(Gateway(settings, {"scripted": ScriptedProvider(delay=0.001, length=8)}))
    yield s
    stop(s)


def command(url: str, *flags: str) -> list[str]:
    return ["-m", "sluicegate", "chat", "--url", url, *flags]


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "SLUICEGATE_API_KEY")}
    return {**env, "TERM": "xterm-256color", **extra}


class Chat:
    """The client in a terminal (of 50 rows and 200 columns unless told)."""

    def __init__(self, url: str, *flags: str, size: tuple[int, int] = (50, 200)) -> None:
        self.url = url
        self.term = pexpect.spawn(
            sys.executable, command(url, *flags), env=environment(), encoding="utf-8",
            timeout=60, dimensions=size,
        )  # fmt: skip
        self.drawn = io.StringIO()  # every byte it wrote
        self.term.logfile_read = self.drawn
        self.term.expect_exact("Ctrl-D leaves.")
        self.term.expect_exact(PROMPT)

    def ask(self, prompt: str) -> tuple[str, re.Match[str]]:
        """Type a prompt; the answer as shown (from its first word), and its figures."""
        self.term.sendline(prompt)
        return self.figures()

    def figures(self) -> tuple[str, re.Match[str]]:
        """The answer as drawn and its figures; then the next prompt."""
        self.term.expect(FIGURES)
        shown, figures = self.term.before, self.term.match
        assert isinstance(shown, str) and isinstance(figures, re.Match)
        self.term.expect_exact(PROMPT)
        return shown, figures

    def generation(self, figures: re.Match[str] | str) -> dict[str, Any]:
        """What the server recorded for the answer these figures are about (or for an id)."""
        return self.generation_of(self.url, figures if isinstance(figures, str) else figures[5])

    @staticmethod
    def generation_of(url: str, gen_id: str) -> dict[str, Any]:
        found: dict[str, Any] = httpx.get(f"{url}/sluicegate/generations/{gen_id}").json()
        return found

    def leave(self) -> int | None:
        self.term.sendeof()
        self.term.expect(pexpect.EOF)
        self.term.close()
        return self.term.exitstatus


def answer_part(shown: str) -> str:
    """What was drawn from the answer's first word on (not the echo of the typed prompt)."""
    assert "You said:" in shown, shown
    return shown[shown.index("You said:") :]


def test_answers_stream_as_markdown_with_figures_and_history(scripted: Server) -> None:
    chat = Chat(scripted.url, "--model", "scripted")
    shown, figures = chat.ask("hello **bold** world")
    drawn = answer_part(shown)
    assert "\x1b[1mbold" in drawn and "**" not in drawn  # rendered as Markdown, not raw
    assert "Streaming puts the first words on screen" in ANSI.sub("", drawn)
    assert int(figures[1]) >= 0 and float(figures[3]) > 0
    assert (int(figures[2]), figures[4]) == (LENGTH, "end_turn")
    first = chat.generation(figures)
    assert (first["route"], first["turns"], first["stop_reason"]) == (
        "websocket",
        ["user"],
        "end_turn",
    )

    shown, figures = chat.ask("and again")
    assert "You said: and again" in ANSI.sub("", shown)
    second = chat.generation(figures)
    assert second["turns"] == ["user", "assistant", "user"]  # the conversation went along
    # Every word of the first turn and its answer was in the second prompt.
    said = first["usage"]["input_tokens"] + LENGTH + 2  # "and again"
    assert second["usage"]["input_tokens"] == said
    assert chat.leave() == 0


def test_ctrl_c_stops_the_generation_on_the_server_and_the_loop_goes_on(scripted: Server) -> None:
    chat = Chat(scripted.url, "--model", "scripted")
    chat.term.sendcontrol("c")  # at the prompt: a fresh prompt, not an exit
    chat.term.expect_exact(PROMPT)
    chat.term.sendline("")  # an empty line: another prompt
    chat.term.expect_exact(PROMPT)
    chat.term.sendline("stop me sluicegate:delay-ms=100")
    chat.term.expect_exact("You said")  # the answer is streaming
    chat.term.sendcontrol("c")
    _, figures = chat.figures()
    assert figures[4] == "cancelled"
    stopped = chat.generation(figures)
    assert stopped["done"] and stopped["stop_reason"] == "cancelled"
    assert stopped["produced_tokens"] < LENGTH  # the producer was stopped early
    assert int(figures[2]) == stopped["usage"]["output_tokens"]

    shown, figures = chat.ask("still there?")
    assert "You said: still there?" in ANSI.sub("", shown)
    assert figures[4] == "end_turn"
    assert chat.generation(figures)["turns"] == ["user", "assistant", "user"]
    assert chat.leave() == 0


def test_a_long_answer_in_a_short_terminal_ends_whole_in_the_scrollback(long: Server) -> None:
    """Live redraws the answer's last lines while it grows (it cannot reach lines that have
    scrolled away), then the whole of it: each line once, in order, on a real screen."""
    rows, columns = 12, 100
    chat = Chat(long.url, "--model", "scripted", size=(rows, columns))
    chat.ask("a long answer")
    screen = pyte.HistoryScreen(columns, rows, history=1000)
    pyte.Stream(screen).feed(chat.drawn.getvalue())
    kept = ["".join(c.data for c in line.values()) for line in screen.history.top]
    lines = [line.rstrip() for line in [*kept, *screen.display]]
    first = next(i for i, line in enumerate(lines) if line.startswith("You said:"))
    end = next(i for i, line in enumerate(lines) if line.startswith("first token"))
    assert end - first > rows  # taller than the terminal
    words = ScriptedProvider(length=LONG).words(
        ChatRequest("scripted", (Message("user", "a long answer"),), 1024)
    )
    assert " ".join(lines[first:end]).split() == "".join(words).split()
    assert chat.leave() == 0


def test_ctrl_c_before_the_first_token(scripted: Server) -> None:
    """Ctrl-C while the model has said nothing yet: stopped on the server, nothing produced."""
    chat = Chat(scripted.url, "--model", "scripted")
    chat.term.sendline("slow to start sluicegate:delay-ms=3000")
    chat.term.expect_exact("slow to start sluicegate:delay-ms=3000")  # the echo
    time.sleep(0.3)  # the first word is due 3 s after the request
    chat.term.sendcontrol("c")
    chat.term.expect(r"(?<!\d)0 tokens · cancelled · ([\w-]+)")
    assert isinstance(chat.term.match, re.Match)
    stopped = chat.generation(chat.term.match[1])
    assert (stopped["stop_reason"], stopped["produced_tokens"]) == ("cancelled", 0)
    chat.term.expect_exact(PROMPT)
    assert chat.leave() == 0


@pytest.mark.parametrize(
    ("door", "route", "end"),
    [("anthropic", "anthropic", "end_turn"), ("openai", "openai", "completed"),
     ("bedrock", "bedrock", "end_turn")],
)  # fmt: skip
def test_http_doors_stream_and_carry_history(
    scripted: Server, door: str, route: str, end: str
) -> None:
    chat = Chat(scripted.url, "--model", "scripted", "--door", door)
    shown, figures = chat.ask("first **turn**")
    assert "\x1b[1mturn" in answer_part(shown) and figures[4] == end
    assert chat.generation(figures)["route"].startswith(route)
    shown, figures = chat.ask("second turn")
    assert "You said: second turn" in ANSI.sub("", shown)
    assert chat.generation(figures)["turns"] == ["user", "assistant", "user"]
    assert chat.leave() == 0


@pytest.mark.parametrize(
    ("door", "recorded"),
    [("openai", "cancelled"), ("anthropic", "cancelled"), ("bedrock", "cancelled")],
)
def test_ctrl_c_on_http_doors(scripted: Server, door: str, recorded: str) -> None:
    """openai cancels its background response; the other two ask sluicegate's own stop."""
    chat = Chat(scripted.url, "--model", "scripted", "--door", door)
    chat.term.sendline("stop me sluicegate:delay-ms=100")
    chat.term.expect_exact("You said")
    chat.term.sendcontrol("c")
    _, figures = chat.figures()
    assert figures[4] == recorded
    assert wait_until(lambda: chat.generation(figures)["done"])
    stopped = chat.generation(figures)
    assert stopped["stop_reason"] == recorded and stopped["produced_tokens"] < LENGTH
    _, figures = chat.ask("next")
    assert chat.generation(figures)["turns"] == ["user", "assistant", "user"]
    assert chat.leave() == 0


def test_piped_prompts_get_plain_answers(scripted: Server) -> None:
    done = subprocess.run(
        [sys.executable, *command(scripted.url, "--model", "scripted")],
        input="one\ntwo\n", capture_output=True, text=True, timeout=60, env=environment(),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    answers = done.stdout.splitlines()
    assert [a.split(" Streaming")[0] for a in answers] == ["You said: one", "You said: two"]
    assert "\x1b" not in done.stdout
    ids = [m[5] for m in FIGURES.finditer(done.stderr)]
    assert len(ids) == 2
    turns = httpx.get(f"{scripted.url}/sluicegate/generations/{ids[1]}").json()["turns"]
    assert turns == ["user", "assistant", "user"]


def test_the_api_key_from_the_environment(keyed: Server) -> None:
    def run(**env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, *command(keyed.url)], input="hi\n", capture_output=True,
            text=True, timeout=60, env=environment(**env),
        )  # fmt: skip

    refused = run()
    assert refused.returncode == 1 and "Forbidden" in refused.stderr and not refused.stdout
    allowed = run(SLUICEGATE_API_KEY=KEY)
    assert allowed.returncode == 0 and allowed.stdout.startswith("You said: hi"), allowed.stderr


def test_the_embedded_model(server: Server) -> None:
    chat = Chat(server.url, "--max-tokens", "24")
    shown, figures = chat.ask("What is the capital of France?")
    assert figures[4] in ("end_turn", "max_tokens") and 1 <= int(figures[2]) <= 24
    gen = chat.generation(figures)
    assert (gen["provider"], gen["stop_reason"]) == ("local", figures[4])
    assert gen["usage"]["output_tokens"] == int(figures[2])
    drawn = ANSI.sub("", shown.split("France?", 1)[1]).strip()
    assert drawn  # some of the answer was drawn
    assert chat.leave() == 0


@pytest.mark.parametrize("door", ["anthropic", "bedrock"])
def test_a_stop_told_in_band_before_the_stream_closes_is_cancelled(
    scripted: Server, door: str
) -> None:
    """The server's word for our stop (an error event, an exception frame) can arrive before
    our own close of the stream does: it is still our stop, not a failure."""
    client = open_door(door, scripted.url, "scripted", None, 1024)
    assert isinstance(client, AnthropicDoor | BedrockDoor)
    pieces = client.stream([{"role": "user", "content": "stop me sluicegate:delay-ms=50"}])
    assert isinstance(next(pieces), Sent)
    assert isinstance(next(pieces), str)
    client.ask_stop()  # stop() without closing the stream: the server's answer comes first
    ended = list(pieces)[-1]
    assert isinstance(ended, Ended) and (ended.stop_reason, ended.error) == ("cancelled", None)
    assert ended.request_id is not None
    assert Chat.generation_of(scripted.url, ended.request_id)["stop_reason"] == "cancelled"
