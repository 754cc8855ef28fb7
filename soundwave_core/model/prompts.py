"""Chat prompts with the audio placeholder, rendered by the backbone tokenizer's own template."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from swv.core.errors import InputError, first_line
from swv.model.chat_render import render_chat
from swv.model.defaults import DEFAULT_INSTRUCTIONS, TRANSCRIPTION_TASKS
from swv.model.splice import IGNORE_INDEX

#: Task of records that carry only a transcript.
TRANSCRIPT_TASK = "asr"
LANGUAGE_SLOT = "{language}"

_LANGUAGE_NAMES = {
    "en": "English", "zh": "Chinese", "de": "German", "fr": "French", "es": "Spanish", "it": "Italian",
    "ja": "Japanese", "ko": "Korean", "pt": "Portuguese", "ru": "Russian", "ar": "Arabic", "nl": "Dutch",
    "th": "Thai", "ca": "Catalan", "fa": "Persian", "et": "Estonian", "mn": "Mongolian", "tr": "Turkish",
    "lv": "Latvian", "sl": "Slovenian", "sv": "Swedish", "cy": "Welsh", "ta": "Tamil", "id": "Indonesian",
    "ro": "Romanian",
}


def language_name(language: str) -> str:
    """``"de"``/``"de-DE"`` -> ``"German"``; unknown tags are returned as given."""
    code = language.strip().replace("_", "-").split("-")[0].lower()
    return _LANGUAGE_NAMES.get(code, language.strip())


def instruction_table(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """The default instruction of each task: :data:`~swv.model.defaults.DEFAULT_INSTRUCTIONS`
    with a model's (recipe's) own entries over it."""
    return {**DEFAULT_INSTRUCTIONS, **(overrides or {})}


def default_instruction(table: Mapping[str, str], task: str, language: str | None = None, where: str = "") -> str:
    """The instruction for a record of ``task`` without one (no task: a transcript, ``asr``);
    ``{language}`` is filled with the name of ``language``."""
    key = task or TRANSCRIPT_TASK
    prefix = f"{where}: " if where else ""
    if key not in table:
        raise InputError(
            f"{prefix}task {key!r} has no default instruction (known: {', '.join(sorted(table))}); give the record "
            f"an 'instruction' or add {key!r} to the recipe's model.instructions"
        )
    text = table[key]
    if LANGUAGE_SLOT in text:
        if not isinstance(language, str) or not language.strip():
            raise InputError(f"{prefix}task {key!r} needs an 'instruction' or a target language ('target_language' field)")
        text = text.replace(LANGUAGE_SLOT, language_name(language))
    return text


def renders_speech(table: Mapping[str, str], instruction: str, task: str | None = None) -> bool:
    """Whether the answer to ``instruction`` renders the speech (a transcript or translation,
    :data:`~swv.model.defaults.TRANSCRIPTION_TASKS`): decided by ``task`` when given, else by
    ``instruction`` being the default instruction of such a task in ``table`` (surrounding
    spaces ignored; ``{language}`` stands for any language name)."""
    return _task_of(table, instruction, task, TRANSCRIPTION_TASKS)


def renders_transcript(table: Mapping[str, str], instruction: str, task: str | None = None) -> bool:
    """Whether the answer to ``instruction`` is a transcript of the speech (task ``asr``, or its
    default instruction in ``table``), as :func:`renders_speech` decides it."""
    return _task_of(table, instruction, task, (TRANSCRIPT_TASK,))


def _task_of(table: Mapping[str, str], instruction: str, task: str | None, tasks: tuple[str, ...]) -> bool:
    """``task`` is one of ``tasks`` or, without ``task``, ``instruction`` is the default instruction
    of one of them."""
    if task:
        return task in tasks
    text = instruction.strip()
    for name in tasks:
        template = table.get(name)
        if template and re.fullmatch(".+".join(re.escape(part) for part in template.split(LANGUAGE_SLOT)), text):
            return True
    return False


#: Brackets of the markers that stand for special-token text of a message while its template
#: is rendered (Unicode private-use characters).
_MARK_OPEN, _MARK_CLOSE = "\ue000", "\ue001"
_MARK = re.compile(f"{_MARK_OPEN}(\\d+){_MARK_CLOSE}")


class PromptBuilder:
    """Renders ``system / user(audio + instruction) / assistant(response)`` conversations.

    The user turn is ``"<audio_patch>\\n<instruction>"`` for audio records (just the
    instruction for text-only ones). Training labels cover the assistant turn only
    (including the template's end-of-turn token).

    In a conversation (:meth:`conversation_ids`: messages a client sent) text cannot create
    special tokens: text spelling one (``<|start_header_id|>``...; the audio placeholder
    excepted, the only one a message may hold) is tokenized as plain text (see :meth:`_ids`), so
    a user cannot open a turn of another role. Records and instructions (training, one-turn
    requests) keep their special tokens: a recipe's answers may be added special tags.
    """

    def __init__(self, tokenizer: Any, system_prompt: str | None, audio_token: str,
                 instructions: Mapping[str, str] | None = None) -> None:
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.audio_token = audio_token
        #: task -> default instruction (:func:`instruction_table` of the model's own entries)
        self.instructions = instruction_table(instructions)
        if not getattr(tokenizer, "chat_template", None):
            raise InputError("the backbone tokenizer has no chat template; set model.backbone.chat_template")
        specials = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
        specials = sorted((specials | set(tokenizer.all_special_tokens)) - {audio_token}, key=len, reverse=True)
        self._specials = re.compile("|".join(map(re.escape, specials))) if specials else None

    @property
    def template_origin(self) -> str:
        """Where the tokenizer's chat template was read from, for error messages: its
        ``chat_template.jinja`` (or ``tokenizer_config.json``) when that file exists."""
        source = str(self.tokenizer.name_or_path or "")
        for name in ("chat_template.jinja", "tokenizer_config.json"):
            if source and (Path(source) / name).is_file():
                return str(Path(source) / name)
        return f"of the tokenizer {source}".rstrip()

    def messages(self, instruction: str, has_audio: bool, task: str = "", language: str | None = None) -> list[dict[str, str]]:
        """An audio record without ``instruction`` gets its task's default (:func:`default_instruction`)."""
        text = instruction
        if has_audio and not instruction:
            text = default_instruction(self.instructions, task, language)
        user = f"{self.audio_token}\n{text}" if has_audio else text
        msgs = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        msgs.append({"role": "user", "content": user})
        return msgs

    def _ids(self, messages: list[dict[str, str]], generation_prompt: bool, plain_text: bool = False) -> list[int]:
        """The template's ids of ``messages``. With ``plain_text``, special-token text inside a
        message is first replaced by a marker; the rendered text is then tokenized between
        markers (special tokens parsed: the template's own) and each marker as its text with
        special tokens split. Without such text (every ordinary message) this is the template's
        own tokenization."""
        found = plain_text and self._specials is not None and any(self._specials.search(m["content"]) for m in messages)
        if not found:
            rendered = self._render(messages, generation_prompt)
            return list(self.tokenizer(rendered, add_special_tokens=False)["input_ids"])
        texts: list[str] = []

        def mark(match: re.Match[str]) -> str:
            texts.append(match.group(0))
            return f"{_MARK_OPEN}{len(texts) - 1}{_MARK_CLOSE}"

        marked = [{**m, "content": self._specials.sub(mark, m["content"])} for m in messages]  # type: ignore[union-attr]
        rendered = self._render(marked, generation_prompt)
        ids: list[int] = []
        for i, piece in enumerate(_MARK.split(rendered)):
            split = i % 2 == 1
            text = texts[int(piece)] if split else piece
            if text:
                ids.extend(self.tokenizer(text, add_special_tokens=False, split_special_tokens=split)["input_ids"])
        return ids

    def _render(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        """The chat template's text of ``messages``, rendered under a time and size budget
        (:func:`swv.model.chat_render.render_chat`); its template errors and sandbox refusals one
        line each."""
        from jinja2 import TemplateError
        from jinja2.exceptions import SecurityError

        try:
            return render_chat(self.tokenizer, messages, generation_prompt, self.template_origin)
        except SecurityError as exc:
            raise InputError(f"chat template: refused by the template sandbox ({first_line(exc)})") from None
        except TemplateError as exc:
            raise InputError(f"chat template: {first_line(exc)}") from None

    def generation_ids(self, instruction: str, has_audio: bool, task: str = "", language: str | None = None) -> list[int]:
        """Prompt ids ending with the assistant header, ready for generation."""
        return self._ids(self.messages(instruction, has_audio, task, language), True)

    def training_ids(self, instruction: str, response: str, has_audio: bool, task: str = "",
                     language: str | None = None) -> tuple[list[int], list[int]]:
        """``(input_ids, labels)``; labels are -100 outside the assistant turn."""
        msgs = self.messages(instruction, has_audio, task, language)
        prompt = self._ids(msgs, True)
        full = self._ids([*msgs, {"role": "assistant", "content": response}], False)
        if full[: len(prompt)] != prompt:
            raise InputError("the chat template renders the prompt differently with and without the answer; cannot mask labels")
        labels = [IGNORE_INDEX] * len(prompt) + full[len(prompt) :]
        return full, labels

    def conversation_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """Prompt ids of a multi-turn conversation (``{"role", "content"}`` text messages whose
        user turns already hold the audio token at each clip's place), ending with the
        assistant header; the system prompt is put first unless the conversation has one.
        Special-token text in the messages is tokenized as plain text."""
        if self.system_prompt and (not messages or messages[0]["role"] != "system"):
            messages = [{"role": "system", "content": self.system_prompt}, *messages]
        return self._ids(messages, True, plain_text=True)
