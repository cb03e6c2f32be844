"""The openai engine against real servers on 127.0.0.1: `transformers serve` on the tiny model,
and a small scripted HTTP server for the status codes a real server rarely gives on demand."""

import json
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import ROOT, read_records, run_cai, wait_for_lines

from cai.foundation.errors import CaiError
from cai.generation import SamplingParams, make_generator

pytestmark = pytest.mark.serve


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`transformers serve MODEL` on a free port of 127.0.0.1; start() waits for /health."""

    def __init__(self, model: Path, port: int | None = None):
        self.model, self.port, self.proc = model, port or free_port(), None
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def start(self):
        import urllib.request

        exe = Path(sys.executable).parent / "transformers"
        self.proc = subprocess.Popen([str(exe), "serve", str(self.model), "--host", "127.0.0.1",
                                      "--port", str(self.port), "--dtype", "float32"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1)
                return self
            except OSError:
                assert self.proc.poll() is None, "transformers serve exited at start"
                time.sleep(0.3)
        raise RuntimeError("transformers serve did not start in 120 s")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def server(tiny_model):
    s = Server(tiny_model).start()
    yield s
    s.stop()


def test_chat_through_transformers_serve(server, tiny_model):
    gen = make_generator("openai", str(tiny_model), base_url=server.url, concurrency=4)
    convs = [[{"role": "user", "content": f"Say something about {w}."}]
             for w in ("cats", "tea", "rain")]
    out = gen.chat(convs, SamplingParams(max_new_tokens=6, temperature=0))
    assert len(out) == 3 and all(isinstance(t, str) for t in out)
    assert gen.stats.generated_tokens >= 3  # a random tiny model's text may decode to blanks
    # transformers serve ignores logprobs: the engine must say so, not return numbers
    with pytest.raises(CaiError, match="(returned no prompt log-probs|choice_logprobs needs)"
                                       ".*transformers serve"):
        gen.choice_logprobs(convs[:1], ["(A)", "(B)"])
    gen.close()


def test_revise_with_openai_engine(server, tiny_model, prompts_file, tmp_path):
    out = tmp_path / "out"
    result = run_cai("revise", "--engine", "openai", "--base-url", server.url,
                     "--model", tiny_model,
                     "--prompts", prompts_file, "--out", out, "--rounds", 1, "--max-new-tokens", 6,
                     "--limit", 3)
    assert result.returncode == 0, result.stderr
    rows = read_records(out / "data.jsonl")
    assert [r["id"] for r in rows] == ["p0", "p1", "p2"]
    assert all(len(r["rounds"]) == 1 for r in rows)


def test_server_killed_mid_job_then_resume(tiny_model, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"s{i:02d}", "prompt": f"Tell me about {i}."})
                               + "\n" for i in range(12)))
    server = Server(tiny_model).start()
    out = tmp_path / "out"
    config = tmp_path / "c.yaml"  # few retries, so a dead server is noticed within seconds
    config.write_text("engine_options:\n  max_retries: 1\n  timeout: 20\n")
    args = ["revise", "--config", config, "--engine", "openai", "--base-url", server.url,
            "--model", tiny_model, "--prompts", prompts, "--out", out, "--rounds", 1,
            "--max-new-tokens", 24, "--chunk-size", 1, "--concurrency", 1]
    job = subprocess.Popen([sys.executable, "-m", "cai.cli", *map(str, args)], cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    data = out / "data.jsonl"
    wait_for_lines(data, 2, timeout=300, proc=job)
    server.stop()
    _, stderr = job.communicate(timeout=120)
    assert job.returncode == 2, stderr
    assert "did not answer" in stderr and "rerun the same command" in stderr
    assert "Traceback" not in stderr
    before = len(read_records(data))
    assert 2 <= before < 12
    server.start()
    try:
        result = run_cai(*args)
    finally:
        server.stop()
    assert result.returncode == 0, result.stderr
    ids = [r["id"] for r in read_records(data)]
    assert sorted(ids) == [f"s{i:02d}" for i in range(12)] and len(set(ids)) == 12


class JsonHandler(BaseHTTPRequestHandler):
    """A real HTTP endpoint on 127.0.0.1 that answers with JSON bodies."""

    def reply(self, status: int, body) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


class Scripted(JsonHandler):
    """Answers /v1/chat/completions from a queue of (status, body) pairs."""

    script: list = []
    seen: list = []

    def do_POST(self):
        self.seen.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.reply(*self.script.pop(0))


@pytest.fixture
def scripted():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    Scripted.script, Scripted.seen = [], []
    yield Scripted, f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()


OK = {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
      "choices": [{"index": 0, "finish_reason": "stop",
                   "message": {"role": "assistant", "content": " hello "}}],
      "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}


def test_retries_429_and_5xx_then_succeeds(scripted):
    handler, url = scripted
    handler.script = [(429, {"error": {"message": "slow down"}}),
                      (503, {"error": {"message": "busy"}}), (200, OK)]
    gen = make_generator("openai", "m", base_url=url, max_retries=3)
    params = SamplingParams(max_new_tokens=5, temperature=0.5, top_p=0.9, seed=7)
    assert gen.chat([[{"role": "user", "content": "hi"}]], params) == ["hello"]
    assert len(handler.seen) == 3
    sent = handler.seen[-1]
    assert (sent["max_tokens"], sent["temperature"], sent["top_p"], sent["seed"]) == \
        (5, 0.5, 0.9, 7)
    assert gen.stats.generated_tokens == 2


def test_client_errors_are_one_clear_line(scripted):
    handler, url = scripted
    handler.script = [(400, {"error": {"message": "max_tokens is too large"}})]
    gen = make_generator("openai", "m", base_url=url, max_retries=3)
    with pytest.raises(CaiError,
                       match=r"refused the request \(HTTP 400\).*max_tokens is too large"):
        gen.chat([[{"role": "user", "content": "hi"}]], SamplingParams())
    assert len(handler.seen) == 1  # a 400 is not retried


def test_openai_engine_needs_a_url(prompts_file, tmp_path):
    result = run_cai("revise", "--engine", "openai", "--model", "m", "--prompts", prompts_file,
                     "--out", tmp_path / "o")
    assert result.returncode == 2 and "needs --base-url" in result.stderr


class Recorder(JsonHandler):
    """Answers every chat request with OK and records the Authorization header it got; with
    `hang`, reads the request and never answers."""

    auth: list = []
    hang = False

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.auth.append(self.headers.get("Authorization"))
        if self.hang:
            time.sleep(30)
            return
        self.reply(200, OK)


@pytest.fixture
def recorder():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    Recorder.auth, Recorder.hang = [], False
    yield Recorder, httpd.server_address[1]
    httpd.shutdown()


def test_the_key_goes_only_where_its_variable_was_named(recorder, monkeypatch):
    """OPENAI_API_KEY in the environment is not sent to another server (before: it went to any
    --base-url, plain http included); a variable named for the server is."""
    handler, port = recorder
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-official")
    monkeypatch.setenv("MY_SERVER_KEY", "local-key")
    conv = [[{"role": "user", "content": "hi"}]]
    url = f"http://127.0.0.1:{port}/v1"
    make_generator("openai", "m", base_url=url).chat(conv, SamplingParams())
    make_generator("openai", "m", base_url=url, api_key_env="MY_SERVER_KEY").chat(
        conv, SamplingParams())
    assert handler.auth == ["Bearer not-needed", "Bearer local-key"]
    with pytest.raises(CaiError, match="--api-key-env NOPE: that environment variable is not"):
        make_generator("openai", "m", base_url=url, api_key_env="NOPE")


def test_credentials_in_the_url_never_reach_messages(recorder):
    handler, port = recorder
    handler.hang = True
    url = f"http://alice:hunter2@127.0.0.1:{port}/v1"
    gen = make_generator("openai", "m", base_url=url, max_retries=0, timeout=0.5, deadline=1.0)
    with pytest.raises(CaiError) as e:
        gen.chat([[{"role": "user", "content": "hi"}]], SamplingParams())
    assert "hunter2" not in str(e.value) and f"127.0.0.1:{port}" in str(e.value)


def test_a_hung_server_stops_the_job_within_the_deadline(recorder):
    """A server that takes requests and never answers: the job stops after `deadline` seconds
    with a line naming the server (before: 600 s per attempt, six attempts)."""
    handler, port = recorder
    handler.hang = True
    url = f"http://127.0.0.1:{port}/v1"
    gen = make_generator("openai", "m", base_url=url, max_retries=5, timeout=0.4, deadline=1.5)
    start = time.monotonic()
    with pytest.raises(CaiError, match=rf"server {url} stopped answering: no reply to a "
                                       r"request within 1.5 s"):
        gen.chat([[{"role": "user", "content": "hi"}]], SamplingParams())
    assert time.monotonic() - start < 5
    assert len(handler.auth) >= 2  # it did retry inside the deadline
