"""The default bounds of a ``swv serve`` request, in a module of constants only, so that
:class:`~swv.serve.settings.ServeSettings` and the ``swv serve`` options share them without the
command importing the server (see ServeSettings for what each bounds)."""

MAX_AUDIO_SECONDS = 60.0
MAX_REQUEST_AUDIO_SECONDS = 120.0
MAX_CLIPS = 8
MAX_AUDIO_CHANNELS = 8
MAX_TEXT_CHARS = 100_000
MAX_BODY_BYTES = 32 * 1024 * 1024
MAX_JSON_DEPTH = 32
MAX_JSON_STRUCTURE_BYTES = 1024 * 1024
WORK_THREADS = 2
