"""Chat templates rendered under a time and size budget (:func:`render_chat`).

A chat template is Jinja code that comes with a model directory, so it is untrusted: transformers
renders it in jinja2's immutable sandbox, which stops escapes but not a template that loops for
hours (``{% for a in range(100000) %}{% for b in range(100000) %}``) or writes gigabytes.
transformers builds that sandbox inside a function for each template, with no hook for its loops
or its output, so swv renders templates itself in the same kind of sandbox
(:class:`BudgetedEnvironment`: ``ImmutableSandboxedEnvironment``, ``trim_blocks``/``lstrip_blocks``,
``loopcontrols``, the ``{% generation %}`` tag and the globals transformers gives templates:
``raise_exception``, ``strftime_now``, the ``tojson`` filter, a ``dict`` and a ``namespace``
that refuse underscore names), with every loop iteration and
every call counted against a deadline and the output against a size cap; the result is
tokenized as ``apply_chat_template`` does (no special tokens added).
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from datetime import datetime
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment

from swv.core.errors import InputError

#: Longest a chat template may take to render one conversation (seconds).
MAX_TEMPLATE_SECONDS = 2.0
#: Most characters a chat template may render for one conversation.
MAX_TEMPLATE_CHARS = 4 << 20
#: Largest integer (in bits) a template's ``**`` may compute.
MAX_POWER_BITS = 4096


class _Budget:
    """The deadline and size cap of one rendering; ``where`` names the template in errors."""

    def __init__(self, where: str, seconds: float, max_chars: int) -> None:
        self.where, self.seconds, self.max_chars = where, seconds, max_chars
        self.deadline = time.monotonic() + seconds

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise InputError(f"chat template {self.where}: rendering took over its {self.seconds:g} s budget "
                             "(MAX_TEMPLATE_SECONDS); the template loops too long")

    def check_size(self, chars: int) -> None:
        if chars > self.max_chars:
            raise InputError(f"chat template {self.where}: rendered over its {self.max_chars:,}-character budget "
                             "(MAX_TEMPLATE_CHARS)")


    def check_binop(self, operator: str, left: Any, right: Any) -> None:
        """Refuse a repetition (``"x" * n``) longer than the output budget and a power whose
        result would have more than :data:`MAX_POWER_BITS` bits."""
        if operator == "*":
            sized, count = (left, right) if isinstance(right, int) else (right, left)
            if isinstance(sized, (str, list, tuple)) and isinstance(count, int) and len(sized) * count > self.max_chars:
                self.check_size(len(sized) * count)
        elif isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0:
            if right * abs(left).bit_length() > MAX_POWER_BITS:
                raise InputError(f"chat template {self.where}: {left} ** {right} is over the {MAX_POWER_BITS}-bit "
                                 "budget of a number (MAX_POWER_BITS)")


_BUDGET: ContextVar[_Budget | None] = ContextVar("swv_template_budget", default=None)


def _tick() -> None:
    budget = _BUDGET.get()
    if budget is not None:
        budget.tick()


class _GenerationTag(Extension):
    """``{% generation %}...{% endgeneration %}`` (transformers' assistant-mask tag): renders its body."""

    tags = {"generation"}

    def parse(self, parser: Any) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        return str(caller())


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


class _TemplateDict:
    """``dict(...)`` and ``dict.fromkeys(...)`` in a template, without the ``dict`` type itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """A ``namespace`` that refuses underscore-prefixed attribute names."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # jinja2's signature trick: ``namespace(self=...)`` works
        self, attrs = args[0], dict(*args[1:], **kwargs)
        for name in attrs:
            _check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)


def _check_name(name: Any) -> None:
    if isinstance(name, str) and name.startswith("_"):
        raise jinja2.exceptions.SecurityError(f"a namespace attribute cannot start with an underscore ({name!r})")


class BudgetedEnvironment(ImmutableSandboxedEnvironment):
    """jinja2's immutable sandbox with transformers' template globals, whose calls and loop
    iterations are counted against the rendering's deadline (:func:`render_chat`)."""

    def __init__(self) -> None:
        super().__init__(trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, "jinja2.ext.loopcontrols"])
        self.filters["tojson"] = _tojson
        self.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now, dict=_TemplateDict(),
                            namespace=_TemplateNamespace)

    #: ``*`` and ``**`` are checked before they run: ``"x" * 10**9`` would allocate a gigabyte at once.
    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        budget = _BUDGET.get()
        if budget is not None:
            budget.check_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)

    def call(self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _tick()
        return super().call(__context, __obj, *args, **kwargs)

    def budgeted(self, iterable: Iterable[Any]) -> Iterator[Any]:
        """``iterable`` with the deadline checked at each item (every ``for`` loop iterates through this)."""
        for item in iterable:
            _tick()
            yield item


@functools.lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
    """``template`` compiled with each ``for`` loop's iterable wrapped in ``environment.budgeted``."""
    env = _environment()
    tree = env.parse(template)
    for loop in tree.find_all(nodes.For):
        loop.iter = nodes.Call(nodes.EnvironmentAttribute("budgeted"), [loop.iter], [], None, None).set_lineno(loop.lineno)
    return env.from_string(tree)


@functools.lru_cache(maxsize=1)
def _environment() -> BudgetedEnvironment:
    return BudgetedEnvironment()


def render_chat(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool, where: str,
                seconds: float = MAX_TEMPLATE_SECONDS, max_chars: int = MAX_TEMPLATE_CHARS) -> str:
    """``messages`` rendered with ``tokenizer``'s chat template (its special tokens as variables,
    as ``apply_chat_template`` passes them) within ``seconds`` and ``max_chars``; an
    :class:`InputError` naming ``where`` (the template's file) and the budget otherwise. Template
    errors (jinja2 ``TemplateError``, sandbox refusals) propagate for the caller to word."""
    template = _compile(tokenizer.get_chat_template())
    budget = _Budget(where, seconds, max_chars)
    token = _BUDGET.set(budget)
    try:
        parts: list[str] = []
        size = 0
        context = {**tokenizer.special_tokens_map, "messages": messages, "tools": None, "documents": None,
                   "add_generation_prompt": generation_prompt}
        for part in template.generate(**context):
            size += len(part)
            budget.check_size(size)
            budget.tick()
            parts.append(part)
        return "".join(parts)
    finally:
        _BUDGET.reset(token)
