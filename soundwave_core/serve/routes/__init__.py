"""The routes of ``swv serve``, one module per endpoint group, each an ``APIRouter``
(``chat``: ``/v1/chat/completions``; ``models``: ``/v1/models``, ``/health``; ``page``: the web
page at ``/``). Handlers reach the server's shared objects through the dependencies of
:mod:`swv.serve.routes.deps`."""
