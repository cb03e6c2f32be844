"""`cai constitution import`: the JSON layout of public CAI recipes, converted to our YAML."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from cai.foundation.errors import CaiError


def import_json(path: str | Path, name: str | None = None) -> dict:
    """Convert the JSON layout of public CAI recipes into our YAML layout (as a dict).

    The input is `{"constitutions": [{"critic": str, "revision": str}, ...], "system_chat":
    [[6 chat turns], ...]}`, each chat being user prompt, assistant answer, user critique
    request, assistant critique, user revision request, assistant revision.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise CaiError(f"{path}: cannot read ({e.strerror or e})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        line = getattr(e, "lineno", None)
        raise CaiError(f"{path}{f':{line}' if line else ''}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("constitutions"), list):
        raise CaiError(f"{path}: expected an object with a 'constitutions' list of "
                       "{'critic', 'revision'} entries")
    principles = []
    for i, c in enumerate(data["constitutions"]):
        if not isinstance(c, dict) or not all(isinstance(c.get(k), str) and c[k].strip()
                                              for k in ("critic", "revision")):
            raise CaiError(f"{path}: constitutions[{i}] needs non-empty 'critic' and 'revision' "
                           "text")
        principles.append({"id": f"principle-{i + 1}", "critique": c["critic"].strip(),
                           "revision": c["revision"].strip()})
    examples = []
    for i, chat in enumerate(data.get("system_chat") or []):
        roles = ["user", "assistant"] * 3
        if not (isinstance(chat, list) and len(chat) == 6 and all(
                isinstance(t, dict) and t.get("role") == r and isinstance(t.get("content"), str)
                for t, r in zip(chat, roles))):
            raise CaiError(f"{path}: system_chat[{i}] must be 6 turns alternating user/assistant "
                           "(prompt, answer, critique request, critique, revision request, "
                           "revision)")
        c = [t["content"].strip() for t in chat]
        examples.append({"prompt": c[0], "response": c[1], "critique_request": c[2],
                         "critique": c[3], "revision_request": c[4], "revision": c[5]})
    out = {"name": name or re.sub(r"[^a-z0-9]+", "-", path.stem.lower()).strip("-") or "imported",
           "description": f"Imported from {path.name}.",
           "critique_revision": principles}
    if examples:
        out["examples"] = examples
    return out


def to_yaml(data: dict) -> str:
    """YAML text for a constitution dict, keys in the documented order, long text folded."""
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)
