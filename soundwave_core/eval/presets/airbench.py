"""AIR-Bench: the foundation track's speech, sound and music tasks (each item's own
multiple-choice question; the paper averages the tasks' accuracies: speech in Table 6, sound and
music in Table 16) and the chat track's speech questions (open answers scored 1-10 by an LLM
judge, ``swv eval --judge-url``; Table 7)."""

from __future__ import annotations

from swv.eval.evaluation import Task
from swv.eval.presets.base import Metric, PaperResult, PresetConfig

#: AIR-Bench's task names (as its meta file spells them) of the nine speech foundation tasks of
#: the paper's Table 6.
AIRBENCH_SPEECH_TASKS = (
    "Speech_Grounding", "Spoken_Language_Identification", "Speaker_Gender_Recognition",
    "Speaker_Emotion_Recontion", "Speaker_Age_Prediction", "Speech_Entity_Reconition",
    "Speaker_Intent_Classification", "Speaker_Number_Verification", "Synthesized_Voice_Detection",
)
#: The sound and the music foundation tasks of the paper's Table 16.
AIRBENCH_SOUND_TASKS = ("Audio_Grounding", "vocal_sound_classification", "Acoustic_Scene_Classification", "Sound_AQA")
AIRBENCH_MUSIC_TASKS = (
    "Music_Instruments_Classfication", "Music_Genre_Recognition", "Music_Midi_Pitch_Analysis",
    "Music_Midi_Velocity_Analysis", "Music_AQA", "Music_Mood_Recognition",
)
#: The chat track's speech tasks (AIR-Bench's "speech" category).
AIRBENCH_SPEECH_CHAT_TASKS = ("speech_QA", "speech_dialogue_QA")


class AirBenchFoundationSpeech(PresetConfig):
    benchmark: str = "AIR-Bench foundation, speech tasks"
    task: Task = "classification"
    metric: Metric = "macro accuracy"
    corpus_format: str = "airbench-foundation"
    item_questions: bool = True
    tasks: tuple[str, ...] | None = AIRBENCH_SPEECH_TASKS
    paper: PaperResult | None = PaperResult(table="Table 6", value=0.755)


class AirBenchFoundationSound(AirBenchFoundationSpeech):
    benchmark: str = "AIR-Bench foundation, sound tasks"
    tasks: tuple[str, ...] | None = AIRBENCH_SOUND_TASKS
    paper: PaperResult | None = PaperResult(table="Table 16", value=0.621)


class AirBenchFoundationMusic(AirBenchFoundationSpeech):
    benchmark: str = "AIR-Bench foundation, music tasks"
    tasks: tuple[str, ...] | None = AIRBENCH_MUSIC_TASKS
    paper: PaperResult | None = PaperResult(table="Table 16", value=0.401)


class AirBenchChatSpeech(PresetConfig):
    benchmark: str = "AIR-Bench chat, speech"
    task: Task = "open"
    metric: Metric = "judge score"
    corpus_format: str = "airbench-chat"
    item_questions: bool = True
    tasks: tuple[str, ...] | None = AIRBENCH_SPEECH_CHAT_TASKS
    paper: PaperResult | None = PaperResult(table="Table 7", value=6.51)
