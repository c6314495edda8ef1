"""Render templates/ on the operator's machine (units, supervisor programs, configs)."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import jinja2

from provision.components import Component

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render(template: str, **context: object) -> str:
    return _environment().get_template(template).render(**context)


def systemd_unit(component: Component) -> str:
    return render("systemd/component.service.j2", component=component)


def supervisor_program(component: Component) -> str:
    return render("supervisor/component.conf.j2", component=component)
