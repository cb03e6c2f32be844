"""Prompt templates: `prompts/*.j2` rendered in a sandboxed jinja2 with StrictUndefined.

A template renders the text of one chat message; the engines then wrap whole conversations in the
model's own chat template. A missing variable is an error, never blank text. Users point a job at
their own folder with `--prompts-dir`; any template missing there falls back to the shipped one.
"""

from __future__ import annotations

from pathlib import Path

import jinja2
from jinja2 import meta
from jinja2.sandbox import SandboxedEnvironment

from cai import ROOT
from cai.foundation.errors import CaiError

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
        except jinja2.TemplateError as e:  # the sandbox refused something (SecurityError)
            raise CaiError(f"{self.filename(name)}: {type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else 'refused'}") from None
        except Exception as e:  # the template's own code failed, e.g. {{ 1 / 0 }}
            raise CaiError(f"{self.filename(name)}: rendering failed: {type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''}") from None

    def filename(self, name: str) -> str:
        source, filename, _ = self.env.loader.get_source(self.env, name)
        return filename

    def fingerprint(self, names) -> str:
        """Text of the templates a job uses and of every template they include, import or
        extend, for the manifest's change detection. A template named only at render time
        (`{% include some_variable %}`) brings in every template of the folders."""
        found: dict[str, str] = {}
        todo = sorted(names)
        while todo:
            name = todo.pop(0)
            if name in found:
                continue
            try:
                found[name] = self.env.loader.get_source(self.env, name)[0]
                refs = list(meta.find_referenced_templates(self.env.parse(found[name])))
            except jinja2.TemplateNotFound:
                raise CaiError(f"template '{name}' not found in "
                               f"{self.env.loader.searchpath}") from None
            except jinja2.TemplateSyntaxError as e:
                raise CaiError(f"{e.filename or name}:{e.lineno}: template syntax error: "
                               f"{e.message}") from None
            todo += sorted(self.env.list_templates()) if None in refs else sorted(refs)
        return "\n".join(found.values())
