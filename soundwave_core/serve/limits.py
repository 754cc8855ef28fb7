"""The default bounds of a ``swv serve`` request, in a module of constants only, so that
:class:`~swv.serve.settings.ServeSettings` and the ``swv serve`` options share them without the
command importing the server (see ServeSettings for what each bounds)."""

MAX_AUDIO_SECONDS = 60.0
MAX_REQUEST_AUDIO_SECONDS = 120.0
MAX_CLIPS = 8
MAX_AUDIO_CHANNELS = 8
MAX_TEXT_CHARS = 100_000
MAX_BODY_BYTES = 32 * 1024 * 1024
#: Bytes of request bodies read and parsed at once, over all requests (swv.serve.body.BodyBudget).
BODY_BUFFER_BYTES = 64 * 1024 * 1024
#: The last bytes of that budget, which only bodies of at most this size may take (at most half
#: the budget), so big bodies in flight do not make small requests wait (swv.serve.body.BodyBudget).
BODY_BUFFER_RESERVE = 8 * 1024 * 1024
MAX_JSON_DEPTH = 32
MAX_JSON_STRUCTURE_BYTES = 1024 * 1024
WORK_THREADS = 2
#: The whole body of a request must arrive within this many seconds (408 otherwise).
BODY_TIMEOUT_SECONDS = 60.0
#: An idle keep-alive connection is closed after this many seconds (uvicorn's timeout_keep_alive).
KEEP_ALIVE_SECONDS = 5.0
#: The request line and headers of a request must arrive within this many seconds (408, closed).
HEADER_TIMEOUT_SECONDS = 10.0
#: The request line and headers of a request, at most (uvicorn's h11_max_incomplete_event_size; 400).
MAX_HEADER_BYTES = 16 * 1024
#: Open connections and requests at once; past it new requests get 503 (uvicorn's limit_concurrency).
MAX_CONNECTIONS = 256
#: On SIGTERM, in-flight requests get this many seconds to finish (new ones get 503 meanwhile).
DRAIN_TIMEOUT_SECONDS = 30.0
#: Refused requests (4xx) per client (peer address) and second answered at once, after a burst
#: of REFUSAL_BURST; past that a refusal is answered late, at most REFUSAL_DELAY_MAX seconds, so
#: a client flooding the server with refused requests is slowed (swv.serve.throttle). 0: off.
REFUSALS_PER_SECOND = 2.0
REFUSAL_BURST = 20
REFUSAL_DELAY_MAX = 10.0
#: An incoming X-Request-Id longer than this (or not printable ASCII) is replaced by a new id.
MAX_REQUEST_ID_CHARS = 128
#: How requests share the model: "continuous" (they join and leave the running batch at token
#: boundaries, swv.serve.scheduler) or "window" (batches collected in a window run to completion,
#: swv.serve.batcher).
CONTINUOUS = "continuous"
WINDOW = "window"
SCHEDULING = (CONTINUOUS, WINDOW)
#: Continuous scheduling prefills at most this many seconds of newcomers' audio between two
#: decoding steps (a single longer request alone), so that is the longest the running rows and
#: the next newcomer wait for others' prefill (swv.serve.scheduler).
PREFILL_AUDIO_SECONDS = 60.0
#: It also prefills at most this many text tokens of newcomers' prompts between two decoding steps
#: (a single longer prompt alone), so long text-only prompts are bounded too: about twice the prompt
#: the audio budget's 60 s make (the serving benchmark's 59 s requests became rows of ~1,000 tokens).
PREFILL_TEXT_TOKENS = 2048
#: Continuous scheduling: a group of newcomers whose longest prompt (text and audio positions)
#: passes this many positions is prefilled this many per tick, with decoding steps between
#: (chunked prefill; a 59 s clip makes ~1,000 positions, a 1 s clip with its prompt ~120).
PREFILL_CHUNK_TOKENS = 256
#: Continuous scheduling: the audio of a group with a long request is encoded in a thread of its
#: own, its nice value raised by this much (Linux; 0: unchanged), so the kernel favours the
#: decoding steps and the event loop over it when the cores are busy.
LONG_ENCODE_NICE = 10
#: Continuous scheduling: a request with more audio than this many seconds, or more prompt text
#: tokens than LONG_TEXT_TOKENS (about the prompt 30 s of audio make), is long: long requests
#: hold at most MAX_LONG_ROWS rows of the running batch (None: a quarter of --max-batch, at least 1), so the other
#: rows stay free for short requests and every decoding step pays for a bounded number of long
#: caches (swv.serve.scheduler).
LONG_AUDIO_SECONDS = 30.0
LONG_TEXT_TOKENS = 512
MAX_LONG_ROWS = None
#: Continuous scheduling: long rows run in a batch of their own, which takes a decoding step only
#: every LONG_STEP_EVERY ticks while short rows run (every tick otherwise): a short row's step then
#: does not read long caches, and long answers slow by about this factor while short ones run.
LONG_STEP_EVERY = 4
#: A request that has waited this many seconds (for a row in the running batch, or for a worker
#: thread to decode its audio) goes before cheaper ones, oldest first (swv.serve.scheduler,
#: swv.serve.priority).
STARVATION_SECONDS = 5.0
