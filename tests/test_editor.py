"""What an editor shows: the YAML language server (the engine of VS Code's and JetBrains' YAML
support) validates constitutions from the schema their first line names, and completes keys.

Marked `editor` and skipped unless `yaml-language-server` is on PATH (`npm install -g
yaml-language-server`; nothing else here needs Node), except in CI (CI=true), where it fails: CI
installs it (scripts/setup-ci-tools.sh)."""

import json
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import ROOT
from test_constitution import GOOD, MANY_PROBLEMS

from cai.schemas import MODELINE

SERVER = shutil.which("yaml-language-server")
IN_CI = os.environ.get("CI", "").lower() in ("true", "1")
pytestmark = [pytest.mark.editor,
              pytest.mark.skipif(SERVER is None and not IN_CI,
                                 reason="no yaml-language-server on PATH")]
SETTINGS = {"validate": True, "completion": True, "hover": True,
            "schemaStore": {"enable": False}, "format": {"enable": False}}


class LanguageServer:
    """A minimal LSP client over stdio: enough to open files, read diagnostics, complete."""

    def __init__(self, root: Path):
        self.proc = subprocess.Popen([SERVER, "--stdio"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.inbox, self.next_id = queue.Queue(), 0
        threading.Thread(target=self._read, daemon=True).start()
        self.request("initialize", {"processId": None, "rootUri": root.as_uri(),
                                    "capabilities": {"workspace": {"configuration": True}}})
        self.notify("initialized", {})
        self.notify("workspace/didChangeConfiguration", {"settings": {"yaml": SETTINGS}})

    def _read(self):
        while True:
            length = None
            while (line := self.proc.stdout.readline().decode()) not in ("\r\n", ""):
                if line.lower().startswith("content-length:"):
                    length = int(line.split(":")[1])
            if length is None:
                return
            self.inbox.put(json.loads(self.proc.stdout.read(length)))

    def _send(self, message: dict):
        data = json.dumps({"jsonrpc": "2.0", **message}).encode()
        self.proc.stdin.write(f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        self.proc.stdin.flush()

    def notify(self, method: str, params: dict):
        self._send({"method": method, "params": params})

    def request(self, method: str, params: dict):
        self.next_id += 1
        mine = self.next_id
        self._send({"id": mine, "method": method, "params": params})
        return self.wait(lambda m: m.get("id") == mine and "method" not in m)["result"]

    def wait(self, wanted, timeout: float = 60) -> dict:
        end = time.time() + timeout
        while time.time() < end:
            try:
                m = self.inbox.get(timeout=1)
            except queue.Empty:
                continue
            if "method" in m and "id" in m:  # the server asks for its settings
                items = m["params"].get("items", []) if m["method"] == "workspace/configuration" \
                    else []
                self._send({"id": m["id"], "result": [SETTINGS if i.get("section") == "yaml"
                                                      else None for i in items] or None})
            elif wanted(m):
                return m
        raise TimeoutError("no answer from yaml-language-server")

    def open(self, path: Path) -> list[tuple[int, str]]:
        """Open a file; its diagnostics as (1-based line, message)."""
        self.notify("textDocument/didOpen", {"textDocument": {
            "uri": path.as_uri(), "languageId": "yaml", "version": 1, "text": path.read_text()}})
        m = self.wait(lambda m: m.get("method") == "textDocument/publishDiagnostics"
                      and m["params"]["uri"] == path.as_uri())
        return [(d["range"]["start"]["line"] + 1, d["message"]) for d in m["params"]["diagnostics"]]

    def complete(self, path: Path, line: int, column: int) -> list[str]:
        result = self.request("textDocument/completion", {
            "textDocument": {"uri": path.as_uri()}, "position": {"line": line - 1,
                                                                 "character": column}})
        return [i["label"] for i in (result["items"] if isinstance(result, dict) else result)]

    def close(self):
        self.proc.kill()
        self.proc.wait()


def test_the_language_server_validates_and_completes_constitutions(tmp_path):
    assert SERVER, "CI=true and no yaml-language-server on PATH (scripts/setup-ci-tools.sh)"
    # beside a copy of the schema, as in constitutions/
    shutil.copy(ROOT / "constitutions/constitution.schema.json", tmp_path)
    header = f"{MODELINE}constitution.schema.json\n"
    files = {"default.yaml": (ROOT / "constitutions/default.yaml").read_text(),
             "broken.yaml": header + MANY_PROBLEMS,
             "typo.yaml": header + GOOD.replace("question:", "qestion:"),
             "new.yaml": header + "name: t\ncritique_revision:\n  - id: one\n    \n"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    server = LanguageServer(tmp_path)
    try:
        assert server.open(tmp_path / "default.yaml") == []
        # the same lines cai constitution check names, one further down for the first line
        found = dict(server.open(tmp_path / "broken.yaml"))
        assert found[2] == "name is empty"
        assert found[4] == "id must be kebab-case (lowercase letters, digits, single hyphens)"
        assert found[5] == "critique is empty"
        assert 6 in found and 13 in found  # revision: 3, preference: "not a list"
        assert any("qestion" in message for _, message in server.open(tmp_path / "typo.yaml"))
        missing = server.open(tmp_path / "new.yaml")
        assert sorted(m for _, m in missing) == ['Missing property "critique".',
                                                 'Missing property "revision".']
        offered = server.complete(tmp_path / "new.yaml", line=5, column=4)
        assert {"critique", "revision"} <= set(offered) and "question" not in offered
    finally:
        server.close()
