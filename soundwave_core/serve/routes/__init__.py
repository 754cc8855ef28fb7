"""The routes of ``swv serve``, one module per endpoint group, each an ``APIRouter``
(``chat``: ``/v1/chat/completions``; ``audio``: ``/v1/audio/transcriptions`` and
``/v1/audio/translations``; ``models``: ``/v1/models``, ``/health``; ``page``: the web
page at ``/``). Handlers reach the server's shared objects through the dependencies of
:mod:`swv.serve.routes.deps`."""
