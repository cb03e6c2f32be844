"""Prompt templates: `prompts/*.j2` rendered in a sandboxed jinja2 with StrictUndefined.

A template renders the text of one chat message; the engines then wrap whole conversations in the
model's own chat template. A missing variable is an error, never blank text. Users point a job at
their own folder with `--prompts-dir`; any template missing there falls back to the shipped one.
"""

from __future__ import annotations

from pathlib import Path

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from cai import ROOT
from cai.errors import CaiError

DEFAULT_DIR = ROOT / "prompts"


class Templates:
    """The template set of one job: a user folder (optional) in front of the shipped one."""

    def __init__(self, user_dir: str | Path | None = None):
        dirs = []
        if user_dir:
            user_dir = Path(user_dir)
            if not user_dir.is_dir():
                raise CaiError(f"{user_dir}: --prompts-dir is not a folder")
            dirs.append(str(user_dir))
        dirs.append(str(DEFAULT_DIR))
        self.env = SandboxedEnvironment(loader=jinja2.FileSystemLoader(dirs),
                                        undefined=jinja2.StrictUndefined,
                                        keep_trailing_newline=False, autoescape=False)

    def render(self, name: str, **variables) -> str:
        """Render `name` (e.g. "critique.j2"); errors name the template and what went wrong."""
        try:
            template = self.env.get_template(name)
            return template.render(**variables).strip()
        except jinja2.TemplateNotFound:
            raise CaiError(f"template '{name}' not found in {self.env.loader.searchpath}") from None
        except jinja2.TemplateSyntaxError as e:
            raise CaiError(f"{e.filename or name}:{e.lineno}: template syntax error: {e.message}") \
                from None
        except jinja2.UndefinedError as e:
            raise CaiError(f"{self.filename(name)}: {e.message} (variables given: "
                           f"{', '.join(sorted(variables))})") from None

    def filename(self, name: str) -> str:
        source, filename, _ = self.env.loader.get_source(self.env, name)
        return filename

    def fingerprint(self, names) -> str:
        """Text of the templates a job uses, for the manifest's change detection."""
        return "\n".join(self.env.loader.get_source(self.env, n)[0] for n in sorted(names))
