"""Chat prompts with the audio placeholder, rendered by the backbone tokenizer's own template."""

from __future__ import annotations

from typing import Any

from swv.errors import InputError
from swv.model.splice import IGNORE_INDEX
from swv.recipes.schema import ASR_INSTRUCTION

#: Instruction used for records that carry only a transcript, by task.
DEFAULT_INSTRUCTIONS = {
    "asr": ASR_INSTRUCTION,
    "": ASR_INSTRUCTION,
}


class PromptBuilder:
    """Renders ``system / user(audio + instruction) / assistant(response)`` conversations.

    The user turn is ``"<audio_patch>\\n<instruction>"`` for audio records (just the
    instruction for text-only ones). Training labels cover the assistant turn only
    (including the template's end-of-turn token).
    """

    def __init__(self, tokenizer: Any, system_prompt: str | None, audio_token: str) -> None:
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.audio_token = audio_token
        if not getattr(tokenizer, "chat_template", None):
            raise InputError("the backbone tokenizer has no chat template; set model.backbone.chat_template")

    def messages(self, instruction: str, has_audio: bool, task: str = "") -> list[dict[str, str]]:
        text = (instruction or DEFAULT_INSTRUCTIONS.get(task, "")) if has_audio else instruction
        user = f"{self.audio_token}\n{text}" if has_audio else text
        msgs = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        msgs.append({"role": "user", "content": user})
        return msgs

    def _ids(self, messages: list[dict[str, str]], generation_prompt: bool) -> list[int]:
        out = self.tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=True)
        if isinstance(out, dict) or hasattr(out, "keys"):
            out = out["input_ids"]
        return list(out)

    def generation_ids(self, instruction: str, has_audio: bool, task: str = "") -> list[int]:
        """Prompt ids ending with the assistant header, ready for generation."""
        return self._ids(self.messages(instruction, has_audio, task), True)

    def training_ids(self, instruction: str, response: str, has_audio: bool, task: str = "") -> tuple[list[int], list[int]]:
        """``(input_ids, labels)``; labels are -100 outside the assistant turn."""
        msgs = self.messages(instruction, has_audio, task)
        prompt = self._ids(msgs, True)
        full = self._ids([*msgs, {"role": "assistant", "content": response}], False)
        if full[: len(prompt)] != prompt:
            raise InputError("the chat template renders the prompt differently with and without the answer; cannot mask labels")
        labels = [IGNORE_INDEX] * len(prompt) + full[len(prompt) :]
        return full, labels

    def conversation_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """Prompt ids of a multi-turn conversation (``{"role", "content"}`` text messages whose
        user turns already hold the audio token at each clip's place), ending with the
        assistant header; the system prompt is put first unless the conversation has one."""
        if self.system_prompt and (not messages or messages[0]["role"] != "system"):
            messages = [{"role": "system", "content": self.system_prompt}, *messages]
        return self._ids(messages, True)
